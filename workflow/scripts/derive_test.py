# Thin wrapper: the test crops of a tuned variant or ensemble from kept test probabilities.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.derive_test(from_snakemake(snakemake), snakemake.wildcards.model,
                       snakemake.input.choices, snakemake.input.probabilities,
                       snakemake.input.manifests, snakemake.output.zarr,
                       snakemake.output.manifest)
