"""Open a submission zip and compare every array with the test manifest: present where the
packer wrote it, at the row's shape, voxel size and translation, integer or bool, regular
files only (the server refuses links), no member escaping the store. Every mismatch is named."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from cellmapseg.data.manifest import ManifestRow
from cellmapseg.submit.store import open_zip

RTOL = 1e-6


def _member_problems(zf: zipfile.ZipFile, zip_path: Path) -> list[str]:
    problems = []
    for info in zf.infolist():
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            problems.append(f"{zip_path}: member {info.filename} is a link")
        parts = Path(info.filename).parts
        if info.filename.startswith("/") or ".." in parts:
            problems.append(f"{zip_path}: member {info.filename} escapes the store")
    return problems


def _array_problem(root: zarr.Group, row: ManifestRow) -> str | None:
    key = f"{row.crop_id}/{row.class_label}"
    try:
        arr = root[key]
    except KeyError:
        return None  # not submitted: a coverage question, not a geometry one
    if not isinstance(arr, zarr.Array):
        return f"{key}: not an array"
    g = row.grid
    problems = []
    if tuple(arr.shape) != g.shape:
        problems.append(f"shape {list(arr.shape)} != manifest {list(g.shape)}")
    if arr.dtype.kind not in "biu":
        problems.append(f"dtype {arr.dtype} is not integer or bool")
    for attr, want in (("voxel_size", g.voxel_size), ("translation", g.translation)):
        got = arr.attrs.get(attr)
        if got is None:
            problems.append(f"attribute {attr} missing")
        elif len(got) != 3 or not np.allclose(np.asarray(got, float), want, rtol=RTOL, atol=0):
            problems.append(f"{attr} {list(got)} != manifest {list(want)}")
    return f"{key}: " + "; ".join(problems) if problems else None


def check(zip_path: Path, rows: Sequence[ManifestRow]) -> tuple[list[str], list[str]]:
    """(problems, not submitted): every geometry mismatch as a line naming crop and class, and
    the manifest rows the zip does not hold."""
    zip_path = Path(zip_path)
    if not zipfile.is_zipfile(zip_path):
        return [f"{zip_path}: not a zip file"], []
    with zipfile.ZipFile(zip_path) as zf:
        problems = _member_problems(zf, zip_path)
    root, store = open_zip(zip_path)
    try:
        for row in rows:
            problem = _array_problem(root, row)
            if problem:
                problems.append(f"{zip_path}: {problem}")
        missing = [f"{r.crop_id}/{r.class_label}" for r in rows
                   if f"{r.crop_id}/{r.class_label}" not in root]
    finally:
        store.close()
    return problems, missing
