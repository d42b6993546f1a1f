# Thin wrapper: score the predictions (results/{model}/eval.csv, eval_summary.json).
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.evaluate(from_snakemake(snakemake), snakemake.input.zarr, snakemake.input.inventory,
                    snakemake.output.csv, snakemake.output.summary)
