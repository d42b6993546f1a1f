"""A prediction brought to a ground-truth grid by the challenge's own rules (its
`match_crop_space` / `MatchedCrop.load_aligned` for a single-scale array carrying `voxel_size`
and `translation`, commit 6b9ad68), for the submission packer and for scoring at the ground
truth's resolution. The same function serves both, so a local score equals the one the server
computes from the same arrays.

The rules, in order:
1. A source with more than 16^3 times the target's voxels is refused.
2. Where the voxel sizes differ (np.allclose), `skimage.transform.rescale` by source/target
   voxel size, mode "constant", range preserved: order 0 for instance classes (ids kept, dtype
   kept), order 1 then > 0.5 for semantic ones (bool sources as float32 first). A source whose
   float32 copy would exceed 500 MiB is rescaled in cubes of 297 voxels, each on its own, placed
   at int(start * factor) in z, y, x order (later cubes overwrite the seam), as the official
   chunked loader does; the threshold comes last. That path never holds more than one cube.
3. The source translation is snapped down to a multiple of the target voxel size, the offset
   to the target translation is floored to whole target voxels (sign kept), and the image is
   placed at that offset in a zero array of the target shape (cut where it overhangs).

Rule 3 takes the source translation for the rescaled image's first voxel, although rescaling
moves that voxel's centre by half a source voxel minus half a target voxel, and it rounds
toward zero: a prediction that starts before its ground truth (as one with the sliding
window's context does) lands one target voxel off per axis or more (measured on the embedded
test crops: 8 nm predictions land 1 voxel off at 4 nm and 2 voxels off at 2 nm, every axis).
`placement="exact"` keeps rules 1 and 2 (the same interpolation, the same voxels) and places
the image where its first voxel's centre lies: round((translation - source voxel / 2 + target
voxel / 2 - target translation) / target voxel). The packer uses it by default
(submission.placement): its arrays are then on the ground truth's grid already, so the server's
own match_crop_space leaves them as they are, and a local score with the same placement is the
server's score of that submission. `placement="official"` reproduces the official rules
bit-exactly (what the server does to an array that is not on the grid).

Memory: with exact placement an image whose rescaled form exceeds EXACT_WHOLE_MAX_VOXELS is
rescaled a target block at a time (data.regrid: the same coordinates and filter, one block in
memory; it differs from skimage only at exact 0.5 ties). The official placement keeps the
official loader's memory: the whole rescaled image, or one rescaled 297^3 cube.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from skimage.transform import rescale

from cellmapseg.blockwise import ScratchArray, slices, spans
from cellmapseg.data.manifest import Grid
from cellmapseg.data.regrid import resample_exact, rescaled_shape
from cellmapseg.errors import InputError

MAX_VOLUME_RATIO = 16 ** 3
CHUNKED_ABOVE_MIB = 500  # the official estimate: source voxels x 4 bytes
CUBE = max(32, int((100 * 1024 * 1024 / 4) ** (1 / 3)))  # the official chunk edge: 297
SEMANTIC_THRESHOLD = 0.5
SLAB_BYTES = 64 * 2 ** 20  # what a copy between arrays holds at once
# Exact placement rescales a larger image a target block at a time (data.regrid): the whole
# skimage path holds it as float64 (128 MiB here), the official cubes up to ~13 GB.
EXACT_WHOLE_MAX_VOXELS = 2 ** 24


def _rescaled_cube(cube: np.ndarray, factors: Sequence[float], instance: bool) -> np.ndarray:
    if instance:
        return rescale(cube, factors, order=0, mode="constant",
                       preserve_range=True).astype(cube.dtype)
    if cube.dtype == bool:
        cube = cube.astype(np.float32)
    return rescale(cube, factors, order=1, mode="constant", preserve_range=True)


def _rescaled_whole(source: Any, factors: Sequence[float], instance: bool) -> np.ndarray:
    out = _rescaled_cube(np.asarray(source[...]), factors, instance)
    return out if instance else out > SEMANTIC_THRESHOLD


def _rescaled_in_cubes(source: Any, factors: Sequence[float], instance: bool,
                       scratch: Path) -> ScratchArray:
    shape = tuple(max(1, int(np.round(s * f))) for s, f in zip(source.shape, factors,
                                                                strict=True))
    out = ScratchArray(scratch, shape, source.dtype if instance else np.bool_)
    for core in spans(source.shape, (CUBE,) * 3):  # C order: z, y, x, as the official loop
        small = _rescaled_cube(np.asarray(source[slices(core)]), factors, instance)
        if not instance:  # the official output is float32, thresholded last; each write
            # thresholded after the same cast gives the same voxels
            small = small.astype(np.float32) > SEMANTIC_THRESHOLD
        at = [int(a * f) for (a, _), f in zip(core, factors, strict=True)]
        size = [max(0, min(a + s, n) - a) for a, s, n in zip(at, small.shape, shape, strict=True)]
        if 0 in size:
            continue
        out[tuple(slice(a, a + s) for a, s in zip(at, size, strict=True))] = \
            small[tuple(slice(0, s) for s in size)]
    return out


def offset(source_translation: Sequence[float], target: Grid) -> np.ndarray:
    """Rule 3: where the image's first voxel lands in the target array (whole voxels)."""
    vs = np.asarray(target.voxel_size, dtype=float)
    snapped = (np.asarray(source_translation, dtype=float) // vs) * vs
    diff = snapped - np.asarray(target.translation, dtype=float)
    return ((np.abs(diff) // vs) * np.sign(diff)).astype(int)


def exact_offset(source_voxel_size: Sequence[float], source_translation: Sequence[float],
                 target: Grid) -> np.ndarray:
    """Where the (rescaled) image's first voxel lands in the target array, from where its
    centre is: rounded to whole target voxels."""
    vs = np.asarray(target.voxel_size, dtype=float)
    first = (np.asarray(source_translation, dtype=float)
             - np.asarray(source_voxel_size, dtype=float) / 2 + vs / 2)
    return np.round((first - np.asarray(target.translation, dtype=float)) / vs).astype(int)


PLACEMENTS = ("exact", "official")


def placement(image_shape: Sequence[int], rel: Sequence[int], target_shape: Sequence[int]
              ) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """(image slices, target slices) of the overlap, or None when nothing overlaps."""
    src, dst = [], []
    for n, r, t in zip(image_shape, rel, target_shape, strict=True):
        if r < 0:
            a, o = -r, 0
            length = min(a + t, n) - a
        else:
            a, o = 0, r
            length = min(t, n + o) - o
        if length <= 0:
            return None
        src.append(slice(a, a + length))
        dst.append(slice(o, o + length))
    return tuple(src), tuple(dst)


def _placed(image: Any, rel: np.ndarray, target: Grid, scratch: Path) -> Any:
    if not np.any(rel) and tuple(image.shape) == tuple(target.shape):
        return image
    where = placement(image.shape, rel, target.shape)
    if isinstance(image, np.ndarray):
        out: Any = np.zeros(target.shape, image.dtype)
    else:
        out = ScratchArray(scratch, target.shape, image.dtype)
    if where is None:
        return out
    src, dst = where
    depth = src[0].stop - src[0].start
    row = (src[1].stop - src[1].start) * (src[2].stop - src[2].start) * image.dtype.itemsize
    for (k, end), in spans((depth,), (max(1, SLAB_BYTES // max(1, row)),)):  # z slabs
        out[(slice(dst[0].start + k, dst[0].start + end), *dst[1:])] = \
            np.asarray(image[(slice(src[0].start + k, src[0].start + end), *src[1:])])
    return out


def match_crop_space(source: Any, voxel_size: Sequence[float], translation: Sequence[float],
                     instance: bool, target: Grid, scratch: Path, where: str = "",
                     placement: str = "official") -> Any:
    """`source` (a zarr or numpy array, z y x) on grid (voxel_size, translation) brought to
    `target` by the challenge's rules (`placement`: "official", or "exact" for rule 3, see the
    module's docstring); an array of target.shape (numpy, or a ScratchArray in `scratch` when
    the source is too large to hold). Semantic results are 0/1 (bool when rescaled), instance
    results keep their ids."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    ratio = float(np.prod(source.shape, dtype=float)) / float(np.prod(target.shape, dtype=float))
    if ratio > MAX_VOLUME_RATIO:
        raise InputError(f"{where or 'source'}: {ratio:.1f}x the voxels of its ground-truth grid "
                         f"{list(target.shape)} (the challenge refuses more than "
                         f"{MAX_VOLUME_RATIO}x): predict at a voxel size closer to "
                         f"{list(target.voxel_size)} nm")
    in_vs = np.asarray(voxel_size, dtype=float)
    scratch.mkdir(parents=True, exist_ok=True)
    image: Any = source
    if not np.allclose(in_vs, np.asarray(target.voxel_size, dtype=float)):
        factors = tuple(in_vs / np.asarray(target.voxel_size, dtype=float))
        if placement == "exact" and (math.prod(rescaled_shape(source.shape, factors))
                                     > EXACT_WHOLE_MAX_VOXELS):
            return resample_exact(source, factors, instance,
                                  exact_offset(voxel_size, translation, target), target,
                                  scratch / "placed.npy")
        chunked = np.prod(source.shape, dtype=float) * 4 / 2 ** 20 > CHUNKED_ABOVE_MIB
        image = (_rescaled_in_cubes(source, factors, instance, scratch / "rescaled.npy")
                 if chunked else _rescaled_whole(source, factors, instance))
    elif np.prod(source.shape, dtype=float) * 4 <= CHUNKED_ABOVE_MIB * 2 ** 20:
        image = np.asarray(source[...])  # small: one read, as the official loader does
    rel = (offset(translation, target) if placement == "official"
           else exact_offset(voxel_size, translation, target))
    return _placed(image, rel, target, scratch / "placed.npy")
