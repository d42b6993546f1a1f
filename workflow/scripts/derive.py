# Thin wrapper: one validation crop of a tuned variant or ensemble from kept probabilities.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.derive(from_snakemake(snakemake), snakemake.wildcards.model, snakemake.input.choices,
                  snakemake.input.probabilities, snakemake.input.inventory,
                  snakemake.wildcards.crop, snakemake.output.zarr, snakemake.output.manifest)
