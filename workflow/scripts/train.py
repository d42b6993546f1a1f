# Thin wrapper: train one model config (torchrun; resumes from checkpoints/last.pt).
from pathlib import Path

from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.train(from_snakemake(snakemake, snakemake.wildcards.model), snakemake.wildcards.model,
                 snakemake.input.inventory, snakemake.input.caching,
                 Path(snakemake.output.summary).parent, threads=snakemake.threads)
