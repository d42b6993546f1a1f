"""What the train stage checks before it starts any rank (so before any GPU work): the model's
network config, the batch against the data, and room for the caching store."""

from __future__ import annotations

from pathlib import Path

from cellmapseg.config import Config, ModelConfig
from cellmapseg.data.caching import check_store_space
from cellmapseg.data.inventory import read_inventory
from cellmapseg.models.registry import check_model
from cellmapseg.probe.select import read_selection
from cellmapseg.train.data import caching_from_selection, check_batch


def check_training(cfg: Config, m: ModelConfig, inventory_csv: Path, caching: Path) -> None:
    check_model(m)
    inv = read_inventory(inventory_csv)
    check_batch(m, int((inv["split"] == "training").sum()), cfg.train.world_size)
    selection = read_selection(caching)
    check_store_space(selection["strategy"], inv,
                      caching_from_selection(cfg, selection))  # e.g. /dev/shm full
