"""The Snakemake adapter of workflow/scripts: the rule's log and the validated config."""

from __future__ import annotations

import logging
from typing import Any

from cellmapseg import config as config_mod
from cellmapseg.config import Config
from cellmapseg.runtime.process import setup_logging

log = logging.getLogger("cellmapseg")


def from_snakemake(snakemake: Any, model: str | None = None) -> Config:
    """Config for a workflow/scripts wrapper: logging to the rule's log, validated config.
    With `model` (train): that model's allocation as the job got it (resources.gpu per node
    and resources.nodes), which is the config's unless a --set-resources changed it."""
    setup_logging(snakemake.log[0] if len(snakemake.log) else None)
    cfg = config_mod.from_dict(dict(snakemake.config))
    if model is None:
        return cfg
    want = cfg.allocation(model)
    gpus = job_gpus(snakemake.resources, want.gpus)
    nodes = getattr(snakemake.resources, "nodes", None)
    nodes = want.nodes if nodes is None else int(nodes)
    allocated = config_mod.with_allocation(cfg, model, gpus, nodes)
    log.info("allocation of %s: resources.gpu = %d, nodes = %d, train.gpus = %d -> world size "
             "%d (%d per node)", model, gpus, nodes, cfg.train.gpus,
             allocated.world_size(model), allocated.ranks_per_node(model))
    return allocated


def job_gpus(resources: Any, default: int) -> int:
    """GPUs per node of the job: resources.gpu (one node), else the count of its gres
    ("gpu:N" or "gpu:TYPE:N", per node), else `default`."""
    gpu = getattr(resources, "gpu", None)
    if gpu is not None:
        return int(gpu)
    gres = getattr(resources, "gres", None)
    if isinstance(gres, str) and gres.startswith("gpu"):
        last = gres.split(":")[-1]
        return int(last) if last.isdigit() else 1
    return default
