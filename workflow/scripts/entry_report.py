# Thin wrapper: a variant's or ensemble's report figures (results/{model}/report/).
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    from_snakemake(snakemake)  # logging to the rule's log
    stages.report_entry(snakemake.wildcards.model, snakemake.input.summary,
                        snakemake.input.zarr, snakemake.input.inventory,
                        snakemake.input.trained, dict(snakemake.output.items()))
