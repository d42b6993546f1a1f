"""The image of a crop to predict, streamed from its NIfTI into a Fortran-ordered .npy beside
the output (NIfTI stores x fastest, so slabs along the last axis are contiguous on both sides);
blocks are then read from it one region at a time."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from cellmapseg.data import nifti
from cellmapseg.errors import InputError

SLAB_BYTES = 256 * 2**20


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
    """Copy a NIfTI image into `dest` (.npy, compact dtype) slab by slab."""
    header = nifti.read_header(path)
    shape = header.shape3d
    if shape is None:
        raise InputError(f"{path}: expected a 3D image, got shape {header.shape}")
    proxy = nib.load(path).dataobj
    out = np.lib.format.open_memmap(dest, mode="w+", dtype=dtype, shape=shape, fortran_order=True)
    step = max(1, SLAB_BYTES // (shape[0] * shape[1] * 4))
    try:
        for z in range(0, shape[2], step):
            slab = np.asarray(proxy[:, :, z:z + step] if len(header.shape) == 3
                              else proxy[:, :, z:z + step, 0])
            out[:, :, z:z + step] = slab.astype(dtype, copy=False)
    except (EOFError, OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the image data ({exc})") from exc
    out.flush()
    del out
    return NpyRegions(dest)
