"""The Snakemake adapter of workflow/scripts: the rule's log and the validated config."""

from __future__ import annotations

import logging
from typing import Any

from cellmapseg import config as config_mod
from cellmapseg.config import Config
from cellmapseg.runtime.process import setup_logging

log = logging.getLogger("cellmapseg")


def from_snakemake(snakemake: Any, allocation: bool = False) -> Config:
    """Config for a workflow/scripts wrapper: logging to the rule's log, validated config.
    allocation=True (train, memory probe): the world size is the GPUs the job was given
    (resources.gpu), not train.gpus, when the two differ on a GPU run."""
    setup_logging(snakemake.log[0] if len(snakemake.log) else None)
    cfg = config_mod.from_dict(dict(snakemake.config))
    if not allocation:
        return cfg
    gpus = int(getattr(snakemake.resources, "gpu", cfg.train.gpus))
    allocated = config_mod.with_allocation(cfg, gpus)
    log.info("allocation: resources.gpu = %d, train.gpus = %d -> world size %d", gpus,
             cfg.train.gpus, allocated.train.world_size)
    return allocated
