# Thin wrapper: the train manifest's Zarr crops as NIfTI crops and a datalist.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.convert(from_snakemake(snakemake), snakemake.params.root, snakemake.input.manifest,
                   snakemake.output.datalist)
