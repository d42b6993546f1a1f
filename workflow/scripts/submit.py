# Thin wrapper: pack the test-crop predictions as the challenge's submission zip, checked.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.submit(from_snakemake(snakemake), snakemake.input.zarr, snakemake.input.manifest,
                  snakemake.output.zip, snakemake.output.json)
