# Thin wrapper: predict the validation crops with the best checkpoint.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.predict(from_snakemake(snakemake), snakemake.wildcards.model, snakemake.input.summary,
                   snakemake.input.inventory, snakemake.output.zarr, snakemake.output.manifest,
                   caching=snakemake.input.caching)
