# Thin wrapper: eval.csv and eval_summary.json from the crops' rows.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.gather_scores(from_snakemake(snakemake), snakemake.input.inventory,
                         snakemake.input.csv, snakemake.output.csv, snakemake.output.summary)
