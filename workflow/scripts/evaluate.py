# Thin wrapper: score one crop's predictions (its rows of eval.csv).
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.evaluate_crop(from_snakemake(snakemake), snakemake.input.zarr,
                         snakemake.input.inventory, snakemake.wildcards.crop,
                         snakemake.output.csv)
