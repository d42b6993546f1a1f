"""The image of a crop to predict, streamed once from its NIfTI into a Fortran-ordered .npy
beside the output; blocks are then read from it one region at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellmapseg.data import nifti
from cellmapseg.errors import InputError


class NpyRegions:
    """Region reads from an .npy file, mapping it only for the duration of one read (so the
    process never keeps more than one region's pages)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        head = np.load(path, mmap_mode="r")
        self.shape, self.dtype = head.shape, head.dtype
        del head

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        mapped = np.load(self.path, mmap_mode="r")
        try:
            return np.array(mapped[key])
        finally:
            del mapped


def stream_image(path: str | Path, dtype: np.dtype, dest: Path) -> NpyRegions:
    """Copy a NIfTI image into `dest` (.npy, compact dtype), decompressing it once from start
    to end (data.nifti.stream_voxels): time linear in the crop, memory bounded by a chunk.

    NIfTI stores the first axis fastest, so the voxel stream is the Fortran order of the array:
    it is appended to a Fortran-ordered .npy with plain file writes (no mapping, so the written
    pages never count in this process's memory)."""
    header = nifti.read_header(path)
    shape = header.shape3d
    if shape is None:
        raise InputError(f"{path}: expected a 3D image, got shape {header.shape}")
    np.lib.format.open_memmap(dest, mode="w+", dtype=dtype, shape=shape, fortran_order=True)
    offset = np.load(dest, mmap_mode="r").offset
    written = 0
    with open(dest, "r+b") as fh:
        fh.seek(offset)
        for chunk in nifti.stream_voxels(path):
            data = chunk.astype(dtype, copy=False)
            fh.write(memoryview(data))  # a 1D contiguous chunk: no copy
            written += data.size
    if written != int(np.prod(shape)):
        raise InputError(f"{path}: {written} voxels read, the header says {int(np.prod(shape))}")
    return NpyRegions(dest)
