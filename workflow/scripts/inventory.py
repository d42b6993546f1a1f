# Thin wrapper: validate the datalist and write results/data/inventory.csv.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    stages.inventory(from_snakemake(snakemake), snakemake.output.csv, workers=snakemake.threads)
