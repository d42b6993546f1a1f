# Thin wrapper: choose the caching strategy (results/probe/caching_strategy.json).
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.select_caching(from_snakemake(snakemake), snakemake.input.memory,
                          snakemake.output.json)
