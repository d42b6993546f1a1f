# Thin wrapper: the comparison across models (results/comparison.*).
from pathlib import Path

from cellmapseg.cli import bad_input_exits, from_snakemake, stage_compare

with bad_input_exits():
    stage_compare(
        from_snakemake(snakemake),  # noqa: F821
        Path("results"),
        Path(snakemake.output.csv).parent,  # noqa: F821
    )
