"""Baselines our results are measured against.

- The spec's own data pipeline (§5.5), for benchmarks and the memory probe: MONAI CacheDataset
  over static transforms that store a normalised float32 image and a 14-channel float32 one-hot
  label (60 bytes per voxel).
- Trivial segmentations (all background; the best intensity interval per class), to show that a
  trained model learned more than a threshold can.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cellmapseg.classes import NUM_CLASSES


def spec_static_transforms() -> Any:  # noqa: ANN401 - a MONAI Compose
    import monai.transforms as mt

    class ToOneHot(mt.MapTransform):
        """Label values 1..14 -> 14 float32 channels (the spec's IntegerLabelToMultiChanneld)."""

        def __call__(self, data: dict) -> dict:
            d = dict(data)
            lab = np.asarray(d["label"])[0]
            d["label"] = torch.from_numpy(
                np.stack([(lab == c + 1).astype(np.float32) for c in range(NUM_CLASSES)])
            )
            return d

    return mt.Compose([
        mt.LoadImaged(keys=["image", "label"]),
        mt.EnsureChannelFirstd(keys=["image", "label"]),
        ToOneHot(keys=["label"]),
        mt.NormalizeIntensityd(keys=["image"]),
    ])


def spec_cache(files: Sequence[dict[str, str]]) -> list[dict]:
    """What the spec's CacheDataset holds for `files` ({"image", "label"} paths), per process."""
    import monai.data as md

    cache = md.CacheDataset(list(files), transform=spec_static_transforms(), cache_rate=1.0,
                            num_workers=0, progress=False)
    return [cache[i] for i in range(len(cache))]


def cached_nbytes(items: Sequence[dict]) -> int:
    return sum(np.asarray(it[k]).nbytes for it in items for k in ("image", "label"))


# --- trivial segmentation baselines, to show that a trained model learned something ----------

BINS = np.linspace(-4.0, 4.0, 65)  # z-scored intensity bins


def _zscore(volume: Any) -> np.ndarray:  # noqa: ANN401 - a cellmapseg Volume
    return (volume.image.astype(np.float32) - volume.mean) / max(volume.std, 1e-6)


def fit_intensity_intervals(volumes: Sequence[Any]) -> dict[int, tuple[float, float]]:
    """Per channel, the z-scored intensity interval whose voxels best match the class (max Dice)
    over the training volumes where the channel is annotated: the best a threshold can do."""
    intervals = {}
    for c in range(NUM_CLASSES):
        inside = np.zeros(len(BINS) - 1)
        total = np.zeros(len(BINS) - 1)
        for v in volumes:
            if not v.annotation_mask[c]:
                continue
            z = _zscore(v).ravel()
            total += np.histogram(z, BINS)[0]
            inside += np.histogram(z[v.label.ravel() == c + 1], BINS)[0]
        if inside.sum() == 0:
            continue
        intervals[c] = _best_interval(inside, total)
    return intervals


def _best_interval(inside: np.ndarray, total: np.ndarray) -> tuple[float, float]:
    ci, ct = np.concatenate([[0], np.cumsum(inside)]), np.concatenate([[0], np.cumsum(total)])
    lo, hi = np.triu_indices(len(inside) + 1, k=1)
    tp = ci[hi] - ci[lo]
    predicted = ct[hi] - ct[lo]
    dice = 2 * tp / (predicted + inside.sum())
    best = int(np.argmax(dice))
    return float(BINS[lo[best]]), float(BINS[hi[best]])


def baseline_records(volumes: Sequence[Any], intervals: dict[int, tuple[float, float]] | None
                     ) -> list[dict]:
    """tp/fp/fn per annotated (crop, channel): all background when `intervals` is None, else the
    intensity-interval prediction."""
    records = []
    for v in volumes:
        z = None if intervals is None else _zscore(v)
        for c in np.flatnonzero(v.annotation_mask):
            truth = v.label == c + 1
            if intervals is None or int(c) not in intervals:
                pred = np.zeros_like(truth)
            else:
                lo, hi = intervals[int(c)]
                pred = (z >= lo) & (z < hi)
            tp = int((pred & truth).sum())
            records.append({"crop": v.name, "channel": int(c), "tp": tp,
                            "fp": int(pred.sum()) - tp, "fn": int(truth.sum()) - tp})
    return records
