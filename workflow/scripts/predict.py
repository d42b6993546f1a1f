# Thin wrapper: predict one validation crop with the best checkpoint (a store of its own), its
# probabilities kept beside it.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.predict(from_snakemake(snakemake), snakemake.wildcards.model, snakemake.input.summary,
                   snakemake.input.inventory, snakemake.output.zarr, snakemake.output.manifest,
                   crops=[snakemake.wildcards.crop], caching=snakemake.input.caching,
                   threads=snakemake.threads, kept=snakemake.output.probabilities)
