# Thin wrapper: choose the caching strategy (results/probe/caching_strategy.json).
from pathlib import Path

from cellmapseg.cli import bad_input_exits, from_snakemake, stage_select_caching

with bad_input_exits():
    stage_select_caching(
        from_snakemake(snakemake),  # noqa: F821
        Path(snakemake.input.memory),  # noqa: F821
        Path(snakemake.output.json),  # noqa: F821
    )
