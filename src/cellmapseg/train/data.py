"""Training and validation data for one rank, under the strategy the selection stage chose."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader

from cellmapseg.config import Config, ModelConfig
from cellmapseg.data.caching import from_selection, open_source
from cellmapseg.data.class_frequency import crop_weights
from cellmapseg.data.padding import with_padding
from cellmapseg.data.sampling import (
    EpochSampler,
    PatchDataset,
    WeightedEpochSampler,
    collate_patches,
    seed_worker,
)
from cellmapseg.data.volumes import VolumeSource
from cellmapseg.errors import ConfigError, InputError
from cellmapseg.train.distributed import Dist


@dataclass
class TrainData:
    loader: DataLoader
    sampler: EpochSampler | WeightedEpochSampler
    validation: VolumeSource
    strategy: str


def steps_per_epoch(n_items: int, world: int, batch_size: int, accumulation: int) -> int:
    per_rank = -(-n_items // world)  # DistributedSampler pads to equal shares
    return (per_rank // batch_size) // accumulation


def check_batch(m: ModelConfig, n_train: int, world: int) -> None:
    """Stop before any GPU work if an epoch would have no optimizer step."""
    items = n_train * m.train_sub_epochs
    if steps_per_epoch(items, world, m.batch_size, m.grad_accumulation) == 0:
        raise ConfigError(
            f"config: key '{m.key('batch_size')}' = {m.batch_size} is larger than the data "
            f"allows: {n_train} training crops x {m.train_sub_epochs} sub-epochs over {world} "
            f"rank(s) x grad_accumulation {m.grad_accumulation} gives no full step per epoch"
        )


def make_data(cfg: Config, m: ModelConfig, inventory: pd.DataFrame, selection: dict[str, Any],
              d: Dist) -> TrainData:
    train_rows = inventory[inventory["split"] == "training"]
    val_rows = inventory[inventory["split"] == "validation"]
    if train_rows.empty or val_rows.empty:
        raise InputError("inventory: training needs at least one training and one validation crop")
    check_batch(m, len(train_rows), d.world)
    caching = from_selection(cfg.caching, selection)
    train_src = with_padding(open_source(caching.strategy, train_rows, caching,
                                         store_rows=inventory), train_rows, cfg.data.padding_mask)
    val_src = with_padding(open_source(caching.strategy, val_rows, caching, store_rows=inventory),
                           val_rows, cfg.data.padding_mask)
    dataset = PatchDataset(train_src, m.roi_size, m.num_samples, m.train_sub_epochs, cfg.seed,
                           cfg.data.pad_image)
    sampler: EpochSampler | WeightedEpochSampler
    if m.sampling == "class_weighted":
        sampler = WeightedEpochSampler(crop_weights(train_rows, cfg.classes), len(dataset),
                                       d.rank, d.world, cfg.seed)
    else:
        sampler = EpochSampler(dataset, d.rank, d.world, cfg.seed, shuffle=True)
    workers = cfg.train.num_workers
    loader = DataLoader(
        dataset, batch_size=m.batch_size, sampler=sampler, num_workers=workers,
        collate_fn=collate_patches, worker_init_fn=seed_worker, drop_last=True,
        pin_memory=d.device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.seed + d.rank),
    )
    return TrainData(loader, sampler, val_src, caching.strategy)
