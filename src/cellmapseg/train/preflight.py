"""What the train stage does before it starts any rank (so before any GPU work): check the
model's network config, the batch against the data and the room for the caching store, build
that store with every CPU of the job, and turn a class-weight rule into the weights it gives."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd

from cellmapseg.config import Config, ModelConfig
from cellmapseg.data.caching import build_store, check_store_space, from_selection
from cellmapseg.data.class_frequency import class_frequencies, class_weights
from cellmapseg.data.inventory import read_inventory
from cellmapseg.models.registry import check_model
from cellmapseg.probe.select import read_selection
from cellmapseg.train.data import check_batch

log = logging.getLogger(__name__)


def resolve_class_weights(cfg: Config, name: str, inventory: pd.DataFrame) -> Config:
    """`cfg` with model `name`'s class-weight rule (inverse, ...) replaced by the list of
    weights it gives on the training crops; any other setting is returned as it is."""
    m = cfg.model(name)
    if not isinstance(m.class_weights, str):
        return cfg
    rows = inventory[inventory["split"] == "training"]
    weights = class_weights(m.class_weights, class_frequencies(rows, cfg.classes))
    log.info("%s: class weights (%s): %s", name, m.class_weights,
             ", ".join(f"{c} {w:.3g}" for c, w in zip(cfg.classes.atomic, weights, strict=True)))
    model = dataclasses.replace(m, class_weights=tuple(round(w, 6) for w in weights))
    return dataclasses.replace(cfg, models={**cfg.models, name: model})


def prepare_training(cfg: Config, m: ModelConfig, inventory_csv: Path, caching: Path,
                     workers: int) -> Config:
    """The checks and the store; returns `cfg` as the ranks must see it (weights resolved)."""
    check_model(m)
    inv = read_inventory(inventory_csv)
    check_batch(m, int((inv["split"] == "training").sum()), cfg.world_size(m.name))
    selection = read_selection(caching)
    settings = from_selection(cfg.caching, selection)
    check_store_space(selection["strategy"], inv, settings)  # e.g. /dev/shm full
    build_store(selection["strategy"], inv, settings, workers)
    return resolve_class_weights(cfg, m.name, inv)
