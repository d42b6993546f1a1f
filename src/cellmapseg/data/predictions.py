"""The predictions store, in the challenge's layout: one Zarr group per crop id, one array per
class of the ontology, atomic and group alike (`{crop_id}/{class}`), uint8 0/1 for semantic
classes and uint32 instance ids for instance classes, each with voxel_size and translation
attributes.

The one owner of that layout: prediction creates stores through `writing` and `create_crop`,
evaluation and the report open them with `open_store` and get checked arrays from
`crop_arrays`. The workflow predicts each crop into a store of its own (one job per crop) and
`gather`s them into the model's store, whose crop groups are links to theirs.

Probabilities are kept beside them in a store of the same layout (`{crop_id}/{atomic class}`,
atomic classes only): sigmoid outputs quantised to uint8 (`quantise`: round(255 p)), so that
thresholds can be tuned and models ensembled without running a network again. A class mask is
`above(q, t)` = q > 255 t, one definition for the predict stage and everything derived from kept
probabilities (at t = 0.5 it is p >= 0.5; elsewhere it moves a voxel only when p lies within
1/510 of t).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import zarr

from cellmapseg.classes import Ontology
from cellmapseg.errors import InputError
from cellmapseg.layout import PREDICTIONS_STORE

CHUNK = 64
PROBABILITY_SCALE = 255  # a kept probability q in 0..255 stands for q / 255


def locate(predictions: str | Path) -> Path:
    """`predictions` is the store itself (*.zarr) or the folder holding predictions.zarr."""
    predictions = Path(predictions)
    return predictions if predictions.suffix == ".zarr" else predictions / PREDICTIONS_STORE


def _temporary(out: Path) -> Path:
    return out.with_name(out.name + ".tmp")


@contextlib.contextmanager
def writing(out: Path) -> Iterator[zarr.Group]:
    """A new store written under a temporary name and renamed onto `out` only when the block
    succeeds, so an interrupted run never leaves a store that looks complete."""
    tmp = _temporary(out)
    shutil.rmtree(tmp, ignore_errors=True)
    root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    try:
        yield root
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def gather(out: Path, crop_stores: Mapping[str, Path], attrs: Mapping[str, object]) -> None:
    """The store `out` holding every crop of `crop_stores` ({crop_id: store}) with root `attrs`.
    Each crop group is a relative link to the crop store's group, not a copy: a crop's
    predictions take as much disk as its image, and results/ can still be moved whole."""
    groups = {}
    for crop_id, store in crop_stores.items():
        group = Path(store) / crop_id
        if not (group / ".zgroup").is_file():
            raise InputError(f"{store}: crop group {crop_id} missing")
        groups[crop_id] = group
    here = out.parent.resolve() / out.name  # the links are read from inside the store
    with writing(out) as root:
        for crop_id, group in groups.items():
            (_temporary(out) / crop_id).symlink_to(os.path.relpath(group.resolve(), here))
        root.attrs.update(dict(attrs))


def create_crop(root: zarr.Group, crop_id: str, shape: tuple[int, ...],
                spacing: Sequence[float], ontology: Ontology,
                translation: Sequence[float] = (0.0, 0.0, 0.0),
                names: Iterable[str] | None = None) -> dict[str, zarr.Array]:
    """Every class array of one crop (atomic classes, then groups; or only `names`),
    zero-filled; `translation` is the world position (nm) of its first voxel's centre."""
    group = root.create_group(crop_id)
    chunks = tuple(min(CHUNK, n) for n in shape)
    arrays = {}
    for name in ontology.names if names is None else names:
        dtype = np.uint32 if ontology.is_instance(name) else np.uint8
        arr = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        arr.attrs.update({"voxel_size": list(map(float, spacing)),
                          "translation": list(map(float, translation))})
        arrays[name] = arr
    return arrays


def create_probabilities(root: zarr.Group, crop_id: str, shape: tuple[int, ...],
                         spacing: Sequence[float], ontology: Ontology,
                         translation: Sequence[float] = (0.0, 0.0, 0.0)
                         ) -> dict[str, zarr.Array]:
    """One crop's kept probabilities: a uint8 array per atomic class, zero-filled."""
    group = root.create_group(crop_id)
    chunks = tuple(min(CHUNK, n) for n in shape)
    arrays = {}
    for name in ontology.atomic:
        arr = group.create_array(name, shape=shape, chunks=chunks, dtype=np.uint8,
                                 fill_value=0)
        arr.attrs.update({"voxel_size": list(map(float, spacing)),
                          "translation": list(map(float, translation)),
                          "probability_scale": PROBABILITY_SCALE})
        arrays[name] = arr
    return arrays


def quantise(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as the kept uint8 values round(255 p)."""
    return np.rint(np.asarray(probabilities, np.float32) * PROBABILITY_SCALE).astype(np.uint8)


def above(q: np.ndarray, threshold: float) -> np.ndarray:
    """The voxels of kept probabilities `q` (uint8, or a float mean of several) above
    `threshold`."""
    return q > PROBABILITY_SCALE * float(threshold)


def probability_arrays(store: zarr.Group, path: Path, crop_id: str, ontology: Ontology,
                       shape: tuple[int, ...] | None = None) -> dict[str, zarr.Array]:
    """The kept probabilities of one crop, every atomic class checked (present, uint8, one
    shape, `shape` when given) before any voxel is read; one InputError line names the
    first problem."""
    where = f"{path}/{crop_id}"
    if crop_id not in store or not isinstance(store[crop_id], zarr.Group):
        raise InputError(f"{where}: crop group missing from the kept probabilities")
    group, arrays = store[crop_id], {}
    for name in ontology.atomic:
        if name not in group or not isinstance(group[name], zarr.Array):
            raise InputError(f"{where}/{name}: probability array missing")
        arr = group[name]
        shape = tuple(arr.shape) if shape is None else shape
        if arr.dtype != np.uint8 or tuple(arr.shape) != shape:
            raise InputError(f"{where}/{name}: {arr.dtype} {tuple(arr.shape)} is not a kept "
                             f"probability of shape {shape} (uint8)")
        arrays[name] = arr
    return arrays


def open_store(path: Path) -> zarr.Group:
    if not path.is_dir():
        raise InputError(f"{path}: prediction store not found")
    try:
        return zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a readable Zarr group ({exc})") from exc


def crop_arrays(store: zarr.Group, path: Path, crop_id: str, crop: str,
                shape: tuple[int, ...], classes: Iterable[str],
                voxel: tuple[float, ...] | None = None) -> dict[str, zarr.Array]:
    """The arrays of `classes` for one crop, each checked (present, shape, integer dtype and,
    when `voxel` is given, voxel_size) before any voxel is read; one InputError line names the
    first problem."""
    where = f"{path}/{crop_id}"
    if crop_id not in store or not isinstance(store[crop_id], zarr.Group):
        raise InputError(f"{where}: crop group missing (crop {crop})")
    group = store[crop_id]
    arrays = {}
    for name in classes:
        problem = _problem(group, name, shape, voxel)
        if problem:
            raise InputError(f"{where}/{name}: {problem} (crop {crop})")
        arrays[name] = group[name]
    return arrays


def _problem(group: zarr.Group, name: str, shape: tuple[int, ...],
             voxel: tuple[float, ...] | None) -> str | None:
    if name not in group or not isinstance(group[name], zarr.Array):
        return "class array missing"
    arr = group[name]
    if tuple(arr.shape) != shape:
        return f"prediction shape {tuple(arr.shape)} != crop shape {shape}"
    if arr.dtype.kind not in "biu":
        return f"dtype {arr.dtype} is not an integer or bool label"
    if voxel is None:
        return None
    attr = arr.attrs.get("voxel_size")
    if attr is None:
        return "attribute voxel_size missing"
    got = tuple(float(v) for v in attr)
    if len(got) != len(voxel) or not np.allclose(got, voxel, rtol=1e-6, atol=0.0):
        return f"voxel_size {list(got)} != configured spacing {list(voxel)} nm"
    return None
