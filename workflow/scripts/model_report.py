# Thin wrapper: one model's report figures (results/{model}/report/).
from pathlib import Path

from cellmapseg.cli import bad_input_exits, from_snakemake, stage_report_model

with bad_input_exits():
    from_snakemake(snakemake)  # noqa: F821 - logging to the rule's log
    stage_report_model(
        snakemake.wildcards.model,  # noqa: F821
        Path(snakemake.input.metrics),  # noqa: F821
        Path(snakemake.input.summary),  # noqa: F821
        Path(snakemake.input.zarr),  # noqa: F821
        Path(snakemake.input.inventory),  # noqa: F821
        {k: Path(snakemake.output[k]) for k in ("curves", "scores", "examples")},  # noqa: F821
    )
