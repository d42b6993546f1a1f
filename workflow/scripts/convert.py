# Thin wrapper: the train manifest's Zarr crops as a datalist (references read in place, or
# NIfTI copies with data.zarr.nifti_copy).
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.convert(from_snakemake(snakemake), snakemake.params.root, snakemake.input.manifest,
                   snakemake.output.datalist)
