"""The one owner of the submission store's layout: one Zarr-2 group, `crop<N>/<class_label>`
arrays with voxel_size, translation and shape attributes. The packer creates it here, the
check opens the zip here."""

from __future__ import annotations

from pathlib import Path

import zarr
from zarr.storage import ZipStore


def create(path: Path) -> zarr.Group:
    """A new, empty submission store at `path` (a folder; the packer zips it)."""
    return zarr.open_group(str(path), mode="w", zarr_format=2)


def open_zip(zip_path: Path) -> tuple[zarr.Group, ZipStore]:
    """The submission inside a zip, read-only; close the returned store when done."""
    store = ZipStore(zip_path, mode="r")
    return zarr.open_group(store, mode="r", zarr_format=2), store
