"""The voxel metrics, one definition each: validation during training and the evaluate stage
both count tp/fp/fn and score them here.

Rule (reference scoring.py `score_semantic`): tp = |P & T|, fp = |P| - tp, fn = |T| - tp.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def iou(tp: int, fp: int, fn: int) -> float:
    """TP / (TP + FP + FN); 1.0 when the denominator is 0 (aggregation.py: nothing anywhere)."""
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def dice(tp: float, fp: float, fn: float) -> float:
    """2TP / (2TP + FP + FN); 1.0 when both prediction and truth are empty (nothing to find and
    nothing claimed is a correct answer for an annotated channel; same convention as `iou`)."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def count_block(pred: np.ndarray, truth: np.ndarray) -> Counts:
    """tp/fp/fn of two boolean arrays of the same shape."""
    tp = int(np.count_nonzero(pred & truth))
    return Counts(tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(truth)) - tp)


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
