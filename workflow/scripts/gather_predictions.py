# Thin wrapper: the model's predictions.zarr and manifest.json from its crops'.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    from_snakemake(snakemake)  # logging to the rule's log
    stages.gather_predictions(snakemake.input.zarr, snakemake.input.manifest,
                              snakemake.output.zarr, snakemake.output.manifest)
