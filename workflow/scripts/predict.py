# Thin wrapper: predict the validation crops with the best checkpoint.
from pathlib import Path

from cellmapseg.cli import bad_input_exits, from_snakemake, stage_predict

with bad_input_exits():
    stage_predict(
        from_snakemake(snakemake),  # noqa: F821
        snakemake.wildcards.model,  # noqa: F821
        Path(snakemake.input.summary),  # noqa: F821
        Path(snakemake.input.inventory),  # noqa: F821
        Path(snakemake.output.zarr),  # noqa: F821
    )
