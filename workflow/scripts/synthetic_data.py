# Thin wrapper: generate the embedded CellMap-like dataset.
from pathlib import Path

from cellmapseg.cli import bad_input_exits, from_snakemake, stage_synthetic

with bad_input_exits():
    stage_synthetic(from_snakemake(snakemake), Path(snakemake.output.datalist).parent)  # noqa: F821
