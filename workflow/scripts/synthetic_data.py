# Thin wrapper: generate the embedded CellMap-like dataset.
from pathlib import Path

from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.synthetic(from_snakemake(snakemake), Path(snakemake.output.datalist).parent)
