"""Validation every eval_epochs: whole volumes by Gaussian sliding window, Dice per annotated
channel, gathered across ranks (each rank scores its share of the volumes)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from cellmapseg.classes import CLASS_NAMES
from cellmapseg.config import InferenceConfig
from cellmapseg.data.batch import prepare_batch
from cellmapseg.data.sampling import VolumeDataset, collate_patches
from cellmapseg.data.volumes import VolumeSource
from cellmapseg.evaluate.metrics import mean_dice
from cellmapseg.predict.window import binarise, sliding_window_logits
from cellmapseg.train.distributed import Dist, all_gather


def confusion_counts(pred: torch.Tensor, target: torch.Tensor,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """(C, 3) int64 tensor of tp, fp, fn per channel for bool-like (C, ...) prediction/target,
    counted on the tensors' device (evaluate.metrics' rule)."""
    pred, target = pred.bool(), target.bool()
    if valid is not None:
        valid = valid.bool().expand_as(pred)
        pred, target = pred & valid, target & valid
    dims = tuple(range(1, pred.ndim))
    tp = (pred & target).sum(dims)
    fp = (pred & ~target).sum(dims)
    fn = (~pred & target).sum(dims)
    return torch.stack([tp, fp, fn], dim=1).long()


def score_volumes(predict: Callable[[torch.Tensor], torch.Tensor], source: VolumeSource,
                  indices: range, roi: tuple[int, ...], cfg: InferenceConfig,
                  device: torch.device) -> list[dict]:
    """tp/fp/fn per annotated (crop, channel) for the volumes `indices` of `source`."""
    volumes = VolumeDataset(source)
    records = []
    with torch.no_grad():  # `predict` applies the model's own autocast
        for i in indices:
            item = volumes[i]
            batch = prepare_batch(collate_patches([item]), device)
            logits = sliding_window_logits(predict, batch.input, roi, cfg)
            pred = binarise(logits, cfg.thresholds())[0]
            counts = confusion_counts(pred, batch.target[0] > 0.5).cpu().numpy()
            for c in np.flatnonzero(item["annotation_mask"][0]):
                tp, fp, fn = (int(v) for v in counts[c])
                records.append({"crop": item["name"], "channel": int(c), "tp": tp, "fp": fp,
                                "fn": fn})
    return records


def validate(predict: Callable[[torch.Tensor], torch.Tensor], source: VolumeSource, d: Dist,
             roi: tuple[int, ...], cfg: InferenceConfig) -> tuple[float, dict[str, float]]:
    mine = score_volumes(predict, source, range(d.rank, len(source), d.world), roi, cfg,
                         d.device)
    records = [r for part in all_gather(mine) for r in part]
    return mean_dice(records, list(CLASS_NAMES))
