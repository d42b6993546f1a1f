# Thin wrapper: the memory probe and the caching decision as report pages.
from pathlib import Path

from cellmapseg.cli import bad_input_exits, from_snakemake, stage_report_probe

with bad_input_exits():
    from_snakemake(snakemake)  # noqa: F821 - logging to the rule's log
    stage_report_probe(
        Path(snakemake.input.memory),  # noqa: F821
        Path(snakemake.input.caching),  # noqa: F821
        Path(snakemake.output.memory),  # noqa: F821
        Path(snakemake.output.caching),  # noqa: F821
    )
