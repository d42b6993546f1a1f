# Thin wrapper: one model's report figures (results/{model}/report/).
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    from_snakemake(snakemake)  # logging to the rule's log
    stages.report_model(snakemake.wildcards.model, snakemake.input.metrics,
                        snakemake.input.summary, snakemake.input.zarr, snakemake.input.inventory,
                        dict(snakemake.output.items()))
