"""Training patches drawn from compact volumes: pad, random ROI crops, flips and rot90.

Everything here works on the compact arrays (uint8 image and label for EM), so a 128^3 patch
costs 4 MB instead of the spec's 120 MB one-hot float32. Randomness comes from a generator
seeded by (seed, epoch, item index): an item's patches depend neither on which DataLoader worker
draws it nor on how many workers there are, and a resumed run redraws exactly the same patches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from cellmapseg.data.compact import PAD_LABEL
from cellmapseg.data.volumes import Volume, VolumeSource

Roi = tuple[int, int, int]


def pad_value(volume: Volume, pad_image: str | float) -> float:
    """Image padding value in the image's own dtype ("mean" pads with the crop's mean)."""
    value = volume.mean if pad_image == "mean" else float(pad_image)
    if np.issubdtype(volume.image.dtype, np.integer):
        info = np.iinfo(volume.image.dtype)
        return float(np.clip(np.round(value), info.min, info.max))
    return value


def crop_or_pad(
    image: np.ndarray, label: np.ndarray, roi: Roi, rng: np.random.Generator, fill: float,
    padding: Callable[[tuple[slice, ...]], np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly placed ROI window; axes shorter than the ROI are padded at a random offset.

    Padded label voxels get PAD_LABEL so the loss can exclude them, and so do the window's
    voxels of black EM padding (`padding`: Volume.padding_mask).
    """
    shape = image.shape
    starts = [int(rng.integers(0, max(n - r, 0) + 1)) for n, r in zip(shape, roi, strict=True)]
    window = tuple(slice(s, min(s + r, n)) for s, r, n in zip(starts, roi, shape, strict=True))
    img, lab = image[window], label[window]
    masked = padding(window) if padding is not None else None
    if masked is not None and masked.any():
        lab = np.where(masked, np.uint8(PAD_LABEL), lab).astype(lab.dtype)  # never the store's
    if img.shape == tuple(roi):
        return img, lab
    offsets = [int(rng.integers(0, r - n + 1)) for n, r in zip(img.shape, roi, strict=True)]
    inner = tuple(slice(o, o + n) for o, n in zip(offsets, img.shape, strict=True))
    padded_img = np.full(roi, fill, dtype=img.dtype)
    padded_lab = np.full(roi, PAD_LABEL, dtype=lab.dtype)
    padded_img[inner], padded_lab[inner] = img, lab
    return padded_img, padded_lab


def flip_rotate(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The spec's augmentation: flip each axis with p=0.5, rot90 (k in 1..3) in axes (0, 1) with
    p=0.75. Image and label get the same operation. Odd k is used only when the first two axes have
    equal length, so every patch keeps the ROI shape."""
    for axis in range(3):
        if rng.random() < 0.5:
            image, label = np.flip(image, axis), np.flip(label, axis)
    if rng.random() < 0.75:
        k = int(rng.integers(1, 4))
        if image.shape[0] != image.shape[1] and k % 2:
            k = 2
        image, label = np.rot90(image, k, axes=(0, 1)), np.rot90(label, k, axes=(0, 1))
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class PatchDataset(Dataset):
    """Item i = `num_samples` augmented ROI patches of volume i mod N (N = number of volumes).

    len = N * train_sub_epochs, so each volume is visited `train_sub_epochs` times per epoch.
    Keys are (epoch, index) pairs from EpochSampler; a plain int means epoch 0.
    """

    def __init__(
        self,
        source: VolumeSource,
        roi: Sequence[int],
        num_samples: int,
        sub_epochs: int,
        seed: int,
        pad_image: str | float = "mean",
    ) -> None:
        if len(source) == 0:
            raise ValueError("PatchDataset needs at least one volume")
        self.source, self.roi = source, tuple(int(r) for r in roi)
        self.num_samples, self.sub_epochs = num_samples, sub_epochs
        self.seed, self.pad_image = seed, pad_image

    def __len__(self) -> int:
        return len(self.source) * self.sub_epochs

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, np.ndarray]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        volume = self.source.get(index % len(self.source))
        rng = np.random.default_rng([self.seed, epoch, index])
        fill = pad_value(volume, self.pad_image)
        images, labels = [], []
        for _ in range(self.num_samples):
            img, lab = crop_or_pad(volume.image, volume.label, self.roi, rng, fill,
                                   volume.padding_mask if volume.padding is not None else None)
            img, lab = flip_rotate(img, lab, rng)
            images.append(img)
            labels.append(lab)
        stats = np.array([[volume.mean, volume.std]], np.float32)
        return {
            "image": np.stack(images)[:, None],  # (S, 1, *roi) compact dtype
            "label": np.stack(labels),  # (S, *roi) uint8, PAD_LABEL where padded
            "annotation_mask": np.repeat(volume.annotation_mask[None], self.num_samples, 0),
            "norm": np.repeat(stats, self.num_samples, 0),
        }


def collate_patches(items: list[dict]) -> dict[str, torch.Tensor | list[str]]:
    """Concatenate items along the sample axis: (B, S, ...) -> (B*S, ...).

    Images of different crops may have different compact dtypes; they are promoted to a common
    one (torch.stack would refuse mixed dtypes).
    """
    out: dict[str, torch.Tensor | list[str]] = {}
    for key in items[0]:
        if key == "name":
            out[key] = [it[key] for it in items]
            continue
        arrays = [np.asarray(it[key]) for it in items]
        dtype = np.result_type(*arrays)
        out[key] = torch.from_numpy(np.concatenate([a.astype(dtype, copy=False) for a in arrays]))
    return out


class EpochSampler(Sampler):
    """DistributedSampler whose indices carry the epoch, so items can seed their own RNG."""

    def __init__(
        self, dataset: Dataset, rank: int, world_size: int, seed: int, shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        self.inner = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
            drop_last=drop_last,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class WeightedEpochSampler(Sampler):
    """EpochSampler for `sampling: class_weighted`: each epoch draws `length` volumes with
    replacement by `weights` from a generator seeded by (seed, epoch), so every rank draws the
    same sequence and a resumed run the same epochs; rank r takes draws r, r + world, ...
    (padded to equal shares like DistributedSampler). Draw k of volume v is the key
    (epoch, k * N + v): PatchDataset reads volume v and seeds its patches by the draw."""

    def __init__(self, weights: Sequence[float], length: int, rank: int, world_size: int,
                 seed: int) -> None:
        w = np.asarray(weights, np.float64)
        if w.ndim != 1 or not len(w) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("WeightedEpochSampler needs one non-negative weight per volume")
        self.p, self.length = w / w.sum(), int(length)
        self.rank, self.world, self.seed = rank, world_size, seed
        self.per_rank = -(-self.length // world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draws(self) -> np.ndarray:
        """The volumes of this epoch's draws, identical on every rank."""
        rng = np.random.default_rng([self.seed, self.epoch, 0x5A3])
        return rng.choice(len(self.p), size=self.length, p=self.p)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = len(self.p)
        keys = [k * n + int(v) for k, v in enumerate(self.draws())]
        keys += keys[: self.per_rank * self.world - len(keys)]
        return ((self.epoch, key) for key in keys[self.rank::self.world])

    def __len__(self) -> int:
        return self.per_rank


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker distinct, reproducible global RNG states (for any library
    randomness outside the per-item generators). torch seeds each worker with base_seed + id,
    and base_seed comes from the loader's seeded generator."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
