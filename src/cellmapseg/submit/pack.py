"""Pack a model's predictions for the test crops of a manifest into the challenge's submission:
one zip holding one Zarr-2 store, `crop<N>/<class_label>` per manifest row, each array at the
row's voxel size, translation and shape (cellmapseg.data.resample: the official rules), with
`voxel_size`, `translation` and `shape` attributes as the official packer writes them.

Semantic arrays are uint8 0/1. Instance arrays keep the prediction's uint32 ids: the official
packer casts them to uint8, which merges two touching objects whose ids differ by a multiple of
256 when the server relabels connected components by id; uint32 never does.

A manifest class the ontology does not predict is left out and listed (the server scores it
as all false negatives); a test crop with no prediction, or a predicted array without its
geometry attributes, is an error. The zip holds regular files only (the server refuses links)
and is written under a temporary name, renamed when complete; the store it is built from is
deleted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cellmapseg.atomic import atomic_path
from cellmapseg.classes import Ontology
from cellmapseg.data.manifest import ManifestRow, by_crop
from cellmapseg.data.predictions import open_store
from cellmapseg.data.resample import match_crop_space
from cellmapseg.errors import InputError
from cellmapseg.submit import store as submission_store

CHUNK = 64
SLAB_VOXELS = 16 * 2 ** 20  # voxels copied into the store at a time


def _geometry(arr: zarr.Array, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    attrs = dict(arr.attrs)
    missing = [k for k in ("voxel_size", "translation") if k not in attrs]
    if missing:
        raise InputError(f"{where}: attribute {' and '.join(missing)} missing; the array's "
                         f"grid is unknown")
    return (tuple(float(v) for v in attrs["voxel_size"]),
            tuple(float(v) for v in attrs["translation"]))


def _copy(image: Any, out: zarr.Array) -> None:
    depth = max(1, SLAB_VOXELS // max(1, out.shape[1] * out.shape[2]))
    for z in range(0, out.shape[0], depth):
        out[z:z + depth] = np.asarray(image[z:z + depth]).astype(out.dtype, copy=False)


def _pack_row(row: ManifestRow, group: zarr.Group, source: zarr.Array, where: str,
              instance: bool, scratch: Path, placement: str) -> None:
    vs, tr = _geometry(source, where)
    g = row.grid
    image = match_crop_space(source, vs, tr, instance, g, scratch / row.crop_id / row.class_label,
                             where, placement)
    dtype = source.dtype if instance else np.uint8
    arr = group.require_group(row.crop_id).create_array(
        row.class_label, shape=g.shape, dtype=dtype, chunks=tuple(min(CHUNK, n) for n in g.shape),
        fill_value=0)
    _copy(image, arr)
    arr.attrs.update({"voxel_size": list(g.voxel_size), "translation": list(g.translation),
                      "shape": list(g.shape)})
    shutil.rmtree(scratch / row.crop_id / row.class_label, ignore_errors=True)


def _zip(store: Path, out: Path) -> None:
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, _dirs, files in os.walk(store):
            for name in sorted(files):
                path = Path(root) / name
                zf.write(path, path.relative_to(store).as_posix())


def pack(predictions: Path, rows: Sequence[ManifestRow], ontology: Ontology, out_zip: Path,
         work: Path | None = None, placement: str = "exact") -> dict[str, Any]:
    """Write `out_zip` from the predictions store for every row of the test manifest; returns
    the packing summary (arrays written, rows left out because the ontology does not predict
    their class). `placement`: data.resample's rule 3 ("exact": each array where its voxels
    lie; "official": the official packer's offset)."""
    store = open_store(predictions)
    crops = by_crop(rows)
    absent = [c for c in crops if c not in store]
    if absent:
        raise InputError(f"{predictions}: test crop(s) {', '.join(absent)} not predicted "
                         f"(datasets {sorted({crops[c][0].dataset for c in absent})})")
    written, left_out = [], []
    parent = work or out_zip.parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".submission.", dir=parent) as tmp:
        zarr_dir = Path(tmp) / "submission.zarr"
        root = submission_store.create(zarr_dir)
        for crop_id, crop_rows in crops.items():
            root.require_group(crop_id)
            for row in crop_rows:
                if row.class_label not in ontology.names:
                    left_out.append(f"{crop_id}/{row.class_label}")
                    continue
                where = f"{predictions}/{crop_id}/{row.class_label}"
                if row.class_label not in store[crop_id]:
                    raise InputError(f"{where}: class array missing")
                _pack_row(row, root, store[crop_id][row.class_label], where,
                          ontology.is_instance(row.class_label), Path(tmp) / "scratch",
                          placement)
                written.append(f"{crop_id}/{row.class_label}")
        shutil.rmtree(Path(tmp) / "scratch", ignore_errors=True)
        _zip(zarr_dir, out_zip)
    return {"zip": str(out_zip), "crops": len(crops), "rows": len(rows), "placement": placement,
            "arrays": len(written), "left_out": left_out,
            "line": (f"{len(written)} of {len(rows)} manifest arrays over {len(crops)} test "
                     f"crops; {len(left_out)} not predicted by the ontology score 0")}
