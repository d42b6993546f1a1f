# Thin wrapper: score the predictions (results/{model}/eval.csv, eval_summary.json).
from pathlib import Path

from cellmapseg.cli import bad_input_exits, from_snakemake, stage_evaluate

with bad_input_exits():
    stage_evaluate(
        from_snakemake(snakemake),  # noqa: F821
        Path(snakemake.input.zarr),  # noqa: F821
        Path(snakemake.input.inventory),  # noqa: F821
        Path(snakemake.output.csv),  # noqa: F821
        Path(snakemake.output.summary),  # noqa: F821
    )
