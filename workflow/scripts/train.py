# Thin wrapper: train one model config (torchrun; resumes from checkpoints/last.pt).
from pathlib import Path

from cellmapseg.cli import bad_input_exits, from_snakemake, stage_train

with bad_input_exits():
    stage_train(
        from_snakemake(snakemake, allocation=True),  # noqa: F821
        snakemake.wildcards.model,  # noqa: F821
        Path(snakemake.input.inventory),  # noqa: F821
        Path(snakemake.input.caching),  # noqa: F821
        Path(snakemake.output.summary).parent,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
