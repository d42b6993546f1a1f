"""A challenge Zarr crop read in place: the `.zcrop` reference files of the Zarr route's
datalist, and the reader that serves them like NIfTI files (data.volume_io dispatches).

A reference is a small JSON file naming the data root, dataset, crop, training voxel size,
which part it is (image or label) and the ontology, so that every stage reads the crop's EM
and label straight from the Zarr at the training grid (data.zarr_crops: the EM cut by the
crop's box, the label brought to the grid by the stated rule) with no converted copy on disk.
Voxels are handed out as a NIfTI file would give them: flat chunks in Fortran order of the
(z, y, x) array, i.e. slabs of the last axis, computed a slab at a time, so memory is bounded
by a slab of the crop; the label's complement_counts are checked once the last slab is read.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellmapseg.atomic import write_json
from cellmapseg.classes import Ontology, from_config
from cellmapseg.data.nifti import NiftiHeader
from cellmapseg.data.zarr_crops import (
    BLOCK,
    CropPlan,
    crop_affine,
    label_region,
    new_counts,
    plan_crop,
    read_em_region,
    settle_counts,
    verify_counts,
)
from cellmapseg.errors import InputError

FORMAT = "cellmapseg-zarr-crop"
VERSION = 1
IMAGE_SUFFIX, LABEL_SUFFIX = "_0000.zcrop", ".zcrop"
PARTS = ("image", "label")
SLAB_PLANES = BLOCK  # last-axis planes computed at once (the label's block edge)


def is_ref(path: str | os.PathLike) -> bool:
    return str(path).endswith(LABEL_SUFFIX)


def ref_paths(folder: Path, dataset: str, crop: str) -> tuple[Path, Path]:
    """(image, label) reference paths in the datalist's naming."""
    stem = f"{dataset}_{crop}"
    return folder / f"{stem}{IMAGE_SUFFIX}", folder / f"{stem}{LABEL_SUFFIX}"


def write_refs(folder: Path, root: str | Path, dataset: str, crop: str,
               voxel_size: Sequence[float], ontology: Ontology) -> tuple[Path, Path]:
    """The crop's two reference files (each written atomically)."""
    paths = ref_paths(folder, dataset, crop)
    for part, path in zip(PARTS, paths, strict=True):
        write_json(path, {"format": FORMAT, "version": VERSION, "part": part,
                          "root": str(Path(root).resolve()), "dataset": dataset, "crop": crop,
                          "voxel_size": [float(v) for v in voxel_size],
                          "classes": ontology.as_dict()})
    return paths


def _read_ref(path: Path) -> dict[str, Any]:
    try:
        ref = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable Zarr crop reference ({exc})") from None
    if not isinstance(ref, dict) or ref.get("format") != FORMAT or ref.get("version") != VERSION:
        raise InputError(f"{path}: not a {FORMAT} version {VERSION} reference")
    if ref.get("part") not in PARTS:
        raise InputError(f"{path}: key 'part' must be one of {PARTS}, got {ref.get('part')!r}")
    return ref


@functools.lru_cache(maxsize=64)
def _plan(path: str, stamp: tuple[int, int]) -> tuple[str, CropPlan]:
    """(part, plan) of a reference; `stamp` (size, mtime) makes a rewritten file a new key."""
    ref = _read_ref(Path(path))
    plan = plan_crop(ref["root"], ref["dataset"], ref["crop"], from_config(ref["classes"]),
                     ref["voxel_size"])
    return ref["part"], plan


def open_ref(path: str | os.PathLike) -> tuple[str, CropPlan]:
    """The part (image or label) and the crop's plan (metadata only; cached per file)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    return _plan(str(p), (st.st_size, st.st_mtime_ns))


def read_header(path: str | os.PathLike) -> NiftiHeader:
    part, plan = open_ref(path)
    shape = tuple(int(n) for n in plan.geometry.shape)
    dtype = np.dtype(plan.em.dtype) if part == "image" else np.dtype(plan.label_dtype)
    return NiftiHeader(path=Path(path), shape=shape, dtype=dtype,
                       spacing=tuple(float(v) for v in plan.geometry.voxel_size), ndim=3,
                       scaled=False, affine=crop_affine(plan))


def _image_slab(plan: CropPlan, x0: int, x1: int) -> np.ndarray:
    box = (*plan.box[:2], slice(plan.box[2].start + x0, plan.box[2].start + x1))
    return read_em_region(plan.em, box, plan.em_where)


def stream_voxels(path: str | os.PathLike, chunk_bytes: int = 64 * 2 ** 20
                  ) -> Iterator[np.ndarray]:
    """Every voxel once, flat, in Fortran order: chunks of whole last-axis planes (as many as
    fit in `chunk_bytes`, at least one), as nifti.stream_voxels hands out a file's."""
    part, plan = open_ref(path)
    d, h, w = (int(n) for n in plan.geometry.shape)
    itemsize = np.dtype(plan.em.dtype if part == "image" else plan.label_dtype).itemsize
    per_chunk = max(1, chunk_bytes // max(1, d * h * itemsize))
    width = max(per_chunk, SLAB_PLANES)
    seen = new_counts(plan.sources)
    for x0 in range(0, w, width):
        x1 = min(w, x0 + width)
        if part == "image":
            slab = _image_slab(plan, x0, x1)
        else:
            slab = label_region(plan.sources, (0, 0, x0), (d, h, x1), seen,
                                dtype=plan.label_dtype)
        for k in range(0, x1 - x0, per_chunk):
            yield np.ravel(slab[:, :, k:k + per_chunk], order="F")
    if part == "label":
        verify_counts(plan, settle_counts(plan.sources, seen))


def load_array(path: str | os.PathLike) -> np.ndarray:
    """The whole part as a (z, y, x) array."""
    header = read_header(path)
    out = np.empty(header.shape, header.dtype, order="F")
    flat = out.reshape(-1, order="F")
    at = 0
    for chunk in stream_voxels(path):
        flat[at:at + chunk.size] = chunk
        at += chunk.size
    return out
