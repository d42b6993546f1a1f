# Thin wrapper: measure the caching strategies (results/probe/memory.json).
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.probe(from_snakemake(snakemake), snakemake.input.inventory,
                 snakemake.output.json)
