# Thin wrapper: one validation crop scored at every tuning threshold from kept probabilities.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.sweep(from_snakemake(snakemake), snakemake.wildcards.model,
                 snakemake.input.probabilities, snakemake.input.inventory,
                 snakemake.wildcards.crop, snakemake.output.csv)
