# Thin wrapper: the comparison across models, variants and ensembles (results/comparison.*).
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.compare(from_snakemake(snakemake), snakemake.input.train, snakemake.input.evaluation,
                   dict(snakemake.output.items()), snakemake.input.tables,
                   snakemake.input.manifests, snakemake.input.choices)
