# Thin wrapper: predict the test manifest's crops with the best checkpoint, probabilities kept.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.predict_test(from_snakemake(snakemake), snakemake.wildcards.model,
                        snakemake.input.summary, snakemake.params.root, snakemake.input.manifest,
                        snakemake.output.zarr, snakemake.output.manifest,
                        threads=snakemake.threads, kept=snakemake.output.probabilities)
