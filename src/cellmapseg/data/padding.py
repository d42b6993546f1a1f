"""Black padding of the EM: voxels that are 0 because the crop's box left the imaged volume
(the converted NIfTI crops have such borders). Where the EM is padding, the label is unknown,
not background, so with `data.padding_mask` these voxels are kept out of the loss, validation
and scoring, like an unannotated channel.

Two rules: `zeros` (every voxel whose EM is 0) and `border` (the runs of 0 that reach the crop's
border along an axis: a voxel is padding when every voxel between it and one face of the crop,
along one of the three axes, is 0; zero voxels inside the tissue are kept). The border rule needs
the whole crop; it is summarised once, while the inventory streams the image, as the first and
last non-zero index of every line along each axis (BorderRuns: three planes of int32 per side,
e.g. 100 MB for a 1796x1500x3000 crop, mapped from disk), from which the mask of any box
follows without reading the image again. numpy has no primitive for "runs reaching the
border", hence this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellmapseg.atomic import atomic_path
from cellmapseg.data.volumes import Volume, VolumeSource
from cellmapseg.errors import InputError

MODES = ("none", "border", "zeros")
Box = tuple[slice, slice, slice]


def _first_last(nonzero: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per line along `axis`: index of its first and last True (n and -1 where none)."""
    n = nonzero.shape[axis]
    has = nonzero.any(axis=axis)
    first = np.argmax(nonzero, axis=axis)
    last = n - 1 - np.argmax(np.flip(nonzero, axis=axis), axis=axis)
    return np.where(has, first, n).astype(np.int32), np.where(has, last, -1).astype(np.int32)


@dataclass
class BorderRuns:
    """First (`lo`) and last (`hi`) non-zero index of every line of a (D, H, W) image along each
    axis a, as planes over the other two axes: axis 0 (H, W), axis 1 (D, W), axis 2 (D, H)."""

    shape: tuple[int, int, int]
    lo: list[np.ndarray]
    hi: list[np.ndarray]

    @classmethod
    def empty(cls, shape: Sequence[int]) -> BorderRuns:
        d, h, w = (int(n) for n in shape)
        planes = [(h, w), (d, w), (d, h)]
        return cls((d, h, w), [np.full(p, n, np.int32) for p, n in zip(planes, (d, h, w),
                                                                          strict=True)],
                   [np.full(p, -1, np.int32) for p in planes])

    def add(self, slab: np.ndarray, start: int) -> None:
        """Take in the planes [start, start + k) along the last axis (`slab` (D, H, k)), in
        order: lines along axes 0 and 1 lie inside the slab; those along axis 2 continue."""
        nz = slab != 0
        stop = start + slab.shape[2]
        self.lo[0][:, start:stop], self.hi[0][:, start:stop] = _first_last(nz, 0)
        self.lo[1][:, start:stop], self.hi[1][:, start:stop] = _first_last(nz, 1)
        first, last = _first_last(nz, 2)
        has = last >= 0
        unset = self.lo[2] == self.shape[2]
        self.lo[2] = np.where(unset & has, first + start, self.lo[2])
        self.hi[2] = np.where(has, last + start, self.hi[2])

    def mask(self, box: Box) -> np.ndarray:
        """bool array of the box's shape, True on padding voxels."""
        (z0, z1), (y0, y1), (x0, x1) = (s.indices(n)[:2] for s, n in zip(box, self.shape,
                                                                            strict=True))
        z = np.arange(z0, z1, dtype=np.int32)[:, None, None]
        y = np.arange(y0, y1, dtype=np.int32)[None, :, None]
        x = np.arange(x0, x1, dtype=np.int32)[None, None, :]
        lo0, hi0 = self.lo[0][None, y0:y1, x0:x1], self.hi[0][None, y0:y1, x0:x1]
        lo1, hi1 = self.lo[1][z0:z1, None, x0:x1], self.hi[1][z0:z1, None, x0:x1]
        lo2, hi2 = self.lo[2][z0:z1, y0:y1, None], self.hi[2][z0:z1, y0:y1, None]
        return (z < lo0) | (z > hi0) | (y < lo1) | (y > hi1) | (x < lo2) | (x > hi2)

    def count(self, slab_voxels: int = 1 << 22) -> int:
        """Padding voxels of the whole crop, in slabs of about `slab_voxels` (whole planes of
        the first axis, or rows of one plane when a plane is larger): the mask and its
        temporaries are a few times the slab, whatever the crop's size."""
        d, h, w = self.shape
        rows = max(1, min(h, slab_voxels // max(w, 1)))
        planes = max(1, slab_voxels // max(h * w, 1)) if rows == h else 1
        return sum(int(self.mask((slice(z, min(z + planes, d)), slice(y, min(y + rows, h)),
                                  slice(0, w))).sum())
                   for z in range(0, d, planes) for y in range(0, h, rows))

    def save(self, folder: str | Path) -> None:
        """One .npy per plane in `folder`, so readers map them (no copy per DataLoader
        worker, pages shared through the page cache)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"shape": np.asarray(self.shape, np.int64),
                  **{f"{side}{a}": arr for side, arrays in (("lo", self.lo), ("hi", self.hi))
                     for a, arr in enumerate(arrays)}}
        for name, arr in arrays.items():
            with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)

    @classmethod
    def load(cls, folder: str | Path) -> BorderRuns:
        folder = Path(folder)
        try:
            shape = tuple(int(n) for n in np.load(folder / "shape.npy"))
            planes = {f"{side}{a}": np.load(folder / f"{side}{a}.npy", mmap_mode="r")
                      for side in ("lo", "hi") for a in range(3)}
        except (OSError, ValueError) as exc:
            raise InputError(f"padding runs {folder}: unreadable ({exc}); rerun the "
                             "inventory rule") from exc
        return cls(shape, [planes[f"lo{a}"] for a in range(3)],
                   [planes[f"hi{a}"] for a in range(3)])


def border_runs(image: np.ndarray, slab_voxels: int = 1 << 24) -> BorderRuns:
    """BorderRuns of an array held or mapped in memory, a slab along the last axis at a time."""
    runs = BorderRuns.empty(image.shape)
    d, h, w = image.shape
    k = max(1, slab_voxels // max(d * h, 1))
    for start in range(0, w, k):
        runs.add(np.asarray(image[:, :, start:start + k]), start)
    return runs


@dataclass(frozen=True)
class Padding:
    """The padding rule of one crop: `mode` and, for `border`, its runs."""

    mode: str
    runs: BorderRuns | None = None

    def mask(self, image: np.ndarray, box: Box) -> np.ndarray | None:
        """True on the padding voxels of `box` (`image` is the box's EM); None: nothing
        masked."""
        if self.mode == "zeros":
            return np.asarray(image) == 0
        if self.mode == "border" and self.runs is not None:
            return self.runs.mask(box)
        return None


def crop_padding(mode: str, runs_path: Any) -> Padding | None:
    """A crop's Padding from the config's mode and the inventory's `padding` column (the runs'
    file, empty when the crop has no border padding)."""
    if mode not in MODES:
        raise ValueError(f"padding mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "none":
        return None
    if mode == "zeros":
        return Padding("zeros")
    path = runs_path if isinstance(runs_path, str) and runs_path.strip() else None
    return Padding("border", BorderRuns.load(path)) if path else None


class PaddedSource:
    """A VolumeSource whose volumes carry their crop's Padding (`rows`: the inventory rows of
    `source`'s volumes, in its order). Runs are mapped from disk when a volume is read."""

    def __init__(self, source: VolumeSource, rows: pd.DataFrame, mode: str) -> None:
        self.source, self.mode = source, mode
        column = rows["padding"] if "padding" in rows.columns else [""] * len(rows)
        self.paths = [str(p) if isinstance(p, str) else "" for p in column]
        self.names = [str(n) for n in rows["crop"]]

    def __len__(self) -> int:
        return len(self.source)

    def get(self, index: int) -> Volume:
        volume = self.source.get(index)
        if volume.name != self.names[index]:
            raise ValueError(f"PaddedSource: volume {index} is {volume.name}, its row "
                             f"{self.names[index]}")
        return dataclasses.replace(volume, padding=crop_padding(self.mode, self.paths[index]))


def with_padding(source: VolumeSource, rows: pd.DataFrame, mode: str) -> VolumeSource:
    return source if mode == "none" else PaddedSource(source, rows, mode)
