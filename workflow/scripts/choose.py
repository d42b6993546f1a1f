# Thin wrapper: a derived entry's thresholds (and members) per fold and final.
from cellmapseg import stages
from cellmapseg.runtime.process import bad_input_exits
from cellmapseg.runtime.snakemake import from_snakemake

with bad_input_exits():
    tables = {name[len("table_"):]: list(paths) for name, paths in snakemake.input.items()
              if name.startswith("table_")}
    stages.choose(from_snakemake(snakemake), snakemake.wildcards.model,
                  snakemake.input.inventory, tables, snakemake.output.json)
