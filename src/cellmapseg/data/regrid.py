"""Exact placement a target block at a time: the rescale of data.resample's rule 2 evaluated
only where each block of the ground-truth grid needs it, so memory is bounded by a block
whatever the crop (the official rules hold the whole rescaled image, or a 297^3 source cube
rescaled: about 13 GB from 8 to 2 nm).

Rule 2 is `skimage.transform.rescale`, i.e. scipy's zoom in grid mode: output voxel o of an
image of n voxels rescaled to m = round(n * f) reads input coordinate (o + 1/2) n / m - 1/2,
zeros outside the input, after a Gaussian of sigma (n/m - 1) / 2 on the axes it shrinks (its
anti-aliasing, semantic classes only). Here output voxel o is target voxel o + rel (rel:
resample.exact_offset), and each target block is computed by scipy's affine_transform (a
diagonal map: no coordinate array) from the source region it reads plus a halo: one voxel for
the interpolation and the Gaussian's radius, zero-padded only where the source ends, as the
whole-array filter pads. scipy's zoom has no block form, hence this; the two differ in the
last bit of some interpolated values, which changes a semantic voxel only where it is 0.5 to
within rounding (a tie) and never changes an instance id away from a tie of nearest-neighbour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from cellmapseg.blockwise import ScratchArray, spans
from cellmapseg.data.manifest import Grid

BLOCK = (128, 128, 128)  # target voxels computed at once (float32: 8 MiB)
TRUNCATE = 4.0  # scipy's gaussian_filter default, as skimage uses it


def rescaled_shape(shape: Sequence[int], factors: Sequence[float]) -> tuple[int, ...]:
    """skimage.transform.rescale's output shape."""
    return tuple(max(1, int(np.round(n * f))) for n, f in zip(shape, factors, strict=True))


def _sigmas(shape: Sequence[int], out_shape: Sequence[int], instance: bool) -> np.ndarray:
    """skimage's anti-aliasing: only when some axis shrinks, never for nearest neighbour of
    integer ids (instance classes)."""
    scale = np.asarray(shape, float) / np.asarray(out_shape, float)
    if instance or not np.any(scale > 1):
        return np.zeros(3)
    return np.maximum(0.0, (scale - 1) / 2)


def _region(lo: np.ndarray, hi: np.ndarray, scale: np.ndarray, halo: np.ndarray,
            n: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Source voxels that output voxels [lo, hi) read, with `halo` more on each side (not
    clipped: the caller pads what lies outside the source)."""
    first = (lo + 0.5) * scale - 0.5
    last = (hi - 1 + 0.5) * scale - 0.5
    start = np.floor(first).astype(int) - 1 - halo
    stop = np.floor(last).astype(int) + 2 + halo
    return start, np.maximum(stop, start + 1)


def _read_padded(source: Any, start: np.ndarray, stop: np.ndarray, dtype: np.dtype
                 ) -> np.ndarray:
    """source[start:stop] as `dtype`, zeros where the box leaves the source."""
    shape = np.asarray(source.shape)
    a, b = np.clip(start, 0, shape), np.clip(stop, 0, shape)
    out = np.zeros(tuple(stop - start), dtype)
    if np.all(b > a):
        inner = tuple(slice(x - s, y - s) for x, y, s in zip(a, b, start, strict=True))
        out[inner] = np.asarray(source[tuple(slice(x, y) for x, y in zip(a, b, strict=True))])
    return out


def resample_exact(source: Any, factors: Sequence[float], instance: bool, rel: Sequence[int],
                   target: Grid, scratch: Path, block: Sequence[int] = BLOCK,
                   threshold: float = 0.5) -> ScratchArray:
    """`source` rescaled by `factors` (source / target voxel size) by rule 2, its first voxel
    at target voxel `rel`, on `target`'s shape: a ScratchArray, semantic voxels bool
    (> threshold), instance voxels the source's ids."""
    n = tuple(int(s) for s in source.shape)
    out_shape = np.asarray(rescaled_shape(n, factors))
    scale = np.asarray(n, float) / out_shape
    rel = np.asarray(rel, int)
    out = ScratchArray(scratch, tuple(map(int, target.shape)),
                       source.dtype if instance else np.bool_)
    lo = np.clip(rel, 0, target.shape)  # target voxels the rescaled image covers
    hi = np.clip(rel + out_shape, 0, target.shape)
    if np.any(hi <= lo):
        return out
    sigma = _sigmas(n, out_shape, instance)
    halo = np.asarray([int(TRUNCATE * s + 0.5) for s in sigma])  # gaussian_filter's radius
    work = source.dtype if instance else np.float32  # skimage's float for bool/uint8 masks
    for core in spans(tuple(hi - lo), tuple(block)):
        t0 = lo + np.asarray([a for a, _ in core])
        t1 = lo + np.asarray([b for _, b in core])
        o0, o1 = t0 - rel, t1 - rel  # voxels of the rescaled image
        start, stop = _region(o0, o1, scale, halo, n)
        sub = _read_padded(source, start, stop, np.dtype(work))
        if np.any(sigma > 0):
            sub = ndi.gaussian_filter(sub, sigma, mode="constant", cval=0, truncate=TRUNCATE)
        values = ndi.affine_transform(
            sub, scale, offset=(o0 + 0.5) * scale - 0.5 - start, output_shape=tuple(o1 - o0),
            order=0 if instance else 1, mode="grid-constant", cval=0, prefilter=False)
        where = tuple(slice(int(a), int(b)) for a, b in zip(t0, t1, strict=True))
        out[where] = values if instance else values > threshold
    return out


def block_bytes(block: Sequence[int] = BLOCK) -> int:
    """What one block holds at most, in float32 values (output plus its source region)."""
    return 8 * math.prod(block)
