# Thin wrapper: the embedded dataset in the challenge's Zarr layout, with its crop manifests.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.synthetic_zarr(from_snakemake(snakemake), snakemake.params.root,
                          snakemake.output.train, snakemake.output.test)
