"""Voxel counts shared by validation Dice during training and the semantic scores of evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch


def confusion_counts(pred: torch.Tensor, target: torch.Tensor,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """(C, 3) int64 tensor of tp, fp, fn per channel for bool-like (C, ...) prediction/target."""
    pred, target = pred.bool(), target.bool()
    if valid is not None:
        valid = valid.bool().expand_as(pred)
        pred, target = pred & valid, target & valid
    dims = tuple(range(1, pred.ndim))
    tp = (pred & target).sum(dims)
    fp = (pred & ~target).sum(dims)
    fn = (~pred & target).sum(dims)
    return torch.stack([tp, fp, fn], dim=1).long()


def dice(tp: float, fp: float, fn: float) -> float:
    """2TP / (2TP + FP + FN); 1.0 when both prediction and truth are empty (nothing to find and
    nothing claimed is a correct answer for an annotated channel)."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def mean_dice(records: Iterable[Mapping[str, float]], class_names: list[str]
              ) -> tuple[float, dict[str, float]]:
    """Mean Dice over annotated (crop, channel) pairs, and per class over its crops.

    `records` hold crop, channel, tp, fp, fn for annotated pairs only."""
    per_class: dict[str, list[float]] = {n: [] for n in class_names}
    for r in records:
        per_class[class_names[int(r["channel"])]].append(dice(r["tp"], r["fp"], r["fn"]))
    values = [v for vs in per_class.values() for v in vs]
    mean = sum(values) / len(values) if values else math.nan
    return mean, {n: (sum(v) / len(v) if v else math.nan) for n, v in per_class.items()}
