"""Process setup shared by every entry point: logging, the bad-input exit, the Snakemake adapter
and how ranks are started (torchrun). Above the config, below every stage."""
