"""What the train stage does before it starts any rank (so before any GPU work): check the
model's network config, the batch against the data and the room for the caching store, then
build that store with every CPU of the job."""

from __future__ import annotations

from pathlib import Path

from cellmapseg.config import Config, ModelConfig
from cellmapseg.data.caching import build_store, check_store_space, from_selection
from cellmapseg.data.inventory import read_inventory
from cellmapseg.models.registry import check_model
from cellmapseg.probe.select import read_selection
from cellmapseg.train.data import check_batch


def prepare_training(cfg: Config, m: ModelConfig, inventory_csv: Path, caching: Path,
                     workers: int) -> None:
    check_model(m)
    inv = read_inventory(inventory_csv)
    check_batch(m, int((inv["split"] == "training").sum()), cfg.train.world_size)
    selection = read_selection(caching)
    settings = from_selection(cfg.caching, selection)
    check_store_space(selection["strategy"], inv, settings)  # e.g. /dev/shm full
    build_store(selection["strategy"], inv, settings, workers)
