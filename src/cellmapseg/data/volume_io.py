"""Crop volumes whatever their file: a NIfTI image or label, or a `.zcrop` reference to a
challenge Zarr crop read in place (data.zcrop). Both hand out their voxels the same way (flat
Fortran-order chunks of bounded size), so what is built on that stream here (a corner for the
memory probe, axis-0 slices and counts for the report, a scratch copy for prediction and
scoring) and every reader of the datalist's files serve both routes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cellmapseg.blockwise import ScratchArray
from cellmapseg.data import nifti, zcrop
from cellmapseg.data.nifti import STREAM_CHUNK_BYTES, NiftiHeader
from cellmapseg.errors import InputError


def read_header(path: str | os.PathLike) -> NiftiHeader:
    """Shape, dtype, spacing and affine, without reading voxels."""
    return zcrop.read_header(path) if zcrop.is_ref(path) else nifti.read_header(path)


def load_array(path: str | os.PathLike, dtype: np.dtype | type | None = None) -> np.ndarray:
    """All voxels (cast only if `dtype`)."""
    if not zcrop.is_ref(path):
        return nifti.load_array(path, dtype)
    array = zcrop.load_array(path)
    return array if dtype is None else array.astype(dtype, copy=False)


def stream_voxels(path: str | os.PathLike, chunk_bytes: int = STREAM_CHUNK_BYTES
                  ) -> Iterator[np.ndarray]:
    """Every voxel once, flat chunks in Fortran order of the array."""
    if zcrop.is_ref(path):
        return zcrop.stream_voxels(path, chunk_bytes)
    return nifti.stream_voxels(path, chunk_bytes)


def read_corner(path: str | os.PathLike, size: int) -> np.ndarray:
    """The sub-volume [:size, :size, :size] of a 3D volume, read plane by plane: only the first
    `size` planes along the last axis are decompressed, and one plane is held at a time."""
    header = read_header(path)
    shape = header.shape3d
    if shape is None:
        raise InputError(f"{path}: expected a 3D volume, got shape {header.shape}")
    d, h, w = shape
    planes = stream_voxels(path, chunk_bytes=d * h * header.dtype.itemsize)
    out = None
    for z, plane in zip(range(min(size, w)), planes, strict=False):
        cut = plane.reshape(d, h, order="F")[:size, :size]
        if out is None:
            out = np.empty((*cut.shape, min(size, w)), dtype=cut.dtype)
        out[:, :, z] = cut
    planes.close()  # stop decompressing: the rest of the file is not needed
    return out


def _rows_of_axis0(path: str | os.PathLike) -> tuple[tuple[int, int, int], Iterator[np.ndarray]]:
    """The 3D shape, and the voxels as (k, d) blocks: each row is one (y, z) position, its d
    entries the axis-0 line (chunks hold whole lines, ~8 MB each)."""
    header = read_header(path)
    shape = header.shape3d
    if shape is None:
        raise InputError(f"{path}: expected a 3D volume, got shape {header.shape}")
    line = shape[0] * header.dtype.itemsize
    chunks = stream_voxels(path, chunk_bytes=line * max(1, (8 << 20) // line))
    return shape, (c.reshape(-1, shape[0]) for c in chunks)


def axis0_counts(path: str | os.PathLike, values: int) -> np.ndarray:
    """(d, values) voxels per (axis-0 index, label value), in one streamed pass."""
    shape, rows = _rows_of_axis0(path)
    counts = np.zeros((shape[0], values), np.int64)
    for block in rows:
        for v in np.unique(block):
            counts[:, int(v)] += np.count_nonzero(block == v, axis=0)
    return counts


def axis0_slice(path: str | os.PathLike, index: int) -> np.ndarray:
    """volume[index] (shape (h, w)), in one streamed pass holding only that slice."""
    shape, rows = _rows_of_axis0(path)
    return np.concatenate([block[:, index] for block in rows]).reshape(shape[1:], order="F")


def stream_to_npy(path: str | os.PathLike, dtype: np.dtype, dest: Path) -> ScratchArray:
    """Copy a volume into `dest` (.npy in `dtype`), decompressing it once from start to
    end (`stream_voxels`): time linear in the crop, memory bounded by a chunk. The copy is then
    read a region at a time (blockwise.ScratchArray).

    NIfTI stores the first axis fastest, so the voxel stream is the Fortran order of the array:
    it is appended to a Fortran-ordered .npy with plain file writes (no mapping, so the written
    pages never count in this process's memory)."""
    header = read_header(path)
    shape = header.shape3d
    if shape is None:
        raise InputError(f"{path}: expected a 3D image, got shape {header.shape}")
    np.lib.format.open_memmap(dest, mode="w+", dtype=dtype, shape=shape, fortran_order=True)
    offset = np.load(dest, mmap_mode="r").offset
    written = 0
    try:
        with open(dest, "r+b") as fh:
            fh.seek(offset)
            for chunk in stream_voxels(path):
                data = chunk.astype(dtype, copy=False)
                fh.write(memoryview(data))  # a 1D contiguous chunk: no copy
                written += data.size
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    if written != int(np.prod(shape)):
        dest.unlink(missing_ok=True)
        raise InputError(f"{path}: {written} voxels read, the header says {int(np.prod(shape))}")
    return ScratchArray(dest)
