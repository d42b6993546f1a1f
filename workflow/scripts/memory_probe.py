# Thin wrapper: measure the caching strategies (results/probe/memory.json).
from pathlib import Path

from cellmapseg.cli import bad_input_exits, from_snakemake, stage_probe

with bad_input_exits():
    stage_probe(
        from_snakemake(snakemake, allocation=True),  # noqa: F821
        Path(snakemake.input.inventory),  # noqa: F821
        Path(snakemake.output.json),  # noqa: F821
    )
