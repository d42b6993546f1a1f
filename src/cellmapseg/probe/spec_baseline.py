"""The spec's own data pipeline (§5.5), the baseline of the memory probe and the benchmarks:
MONAI CacheDataset over static transforms that store a normalised float32 image and a 14-channel
float32 one-hot label (60 bytes per voxel)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def spec_static_transforms(labels: Sequence[int]) -> Any:  # a MONAI Compose
    import monai.transforms as mt

    class ToOneHot(mt.MapTransform):
        """Label values -> one float32 channel each (the spec's IntegerLabelToMultiChanneld)."""

        def __call__(self, data: dict) -> dict:
            d = dict(data)
            lab = np.asarray(d["label"])[0]
            d["label"] = torch.from_numpy(
                np.stack([(lab == v).astype(np.float32) for v in labels])
            )
            return d

    return mt.Compose([
        mt.LoadImaged(keys=["image", "label"]),
        mt.EnsureChannelFirstd(keys=["image", "label"]),
        ToOneHot(keys=["label"]),
        mt.NormalizeIntensityd(keys=["image"]),
    ])


def spec_cache(files: Sequence[dict[str, str]], labels: Sequence[int]) -> list[dict]:
    """What the spec's CacheDataset holds for `files` ({"image", "label"} paths), per process,
    with one channel per label value of `labels`."""
    import monai.data as md

    cache = md.CacheDataset(list(files), transform=spec_static_transforms(labels), cache_rate=1.0,
                            num_workers=0, progress=False)
    return [cache[i] for i in range(len(cache))]


def cached_nbytes(items: Sequence[dict]) -> int:
    return sum(np.asarray(it[k]).nbytes for it in items for k in ("image", "label"))
