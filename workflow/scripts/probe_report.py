# Thin wrapper: the memory probe and the caching decision as report pages.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    from_snakemake(snakemake)  # logging to the rule's log
    stages.report_probe(snakemake.input.memory, snakemake.input.caching,
                        dict(snakemake.output.items()))
