# Thin wrapper: validate the datalist and write results/data/inventory.csv.
from pathlib import Path

from cellmapseg.cli import bad_input_exits, from_snakemake, stage_inventory

with bad_input_exits():
    stage_inventory(
        from_snakemake(snakemake),  # noqa: F821
        Path(snakemake.output.csv),  # noqa: F821
        workers=snakemake.threads,  # noqa: F821
    )
