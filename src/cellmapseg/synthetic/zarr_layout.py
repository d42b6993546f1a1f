"""A small dataset in the challenge's Zarr layout, written from numpy arrays, and its train and
test crop manifests in the challenge's CSV format.

  <root>/<dataset>/<dataset>.zarr/recon-1/em/fibsem-uint8/{s0,s1}       EM, s1 = 2 x s0
  <root>/<dataset>/<dataset>.zarr/recon-1/labels/groundtruth/crop<N>/<class>/s0

Every group carries OME-NGFF 0.4 multiscales (axes z, y, x in nm, translation at the centre of
voxel 0) and the crop and class groups carry cellmap-schemas' annotation attributes as the
challenge's data does: the crop's "class_names", each class's "annotation_type" (semantic:
absent 0, present 1, unknown 255; instance: absent 0, unknown 255, ids otherwise) and each
level's "complement_counts". A class listed in `unknown` is held but not annotated: written
unknown everywhere. Test crops have EM only, as the challenge distributes them.

Manifests: `crop_name,dataset,class_label,voxel_size,translation,shape`, lists `[z;y;x]`, one
row per crop and class (the challenge's utils/train_crop_manifest.csv and
test_crop_manifest.csv); a training crop lists the classes it annotates.

The synthetic layer may not import cellmapseg.data (import-linter layers), so the formats are
written here and read back by data.ngff, data.zarr_crops and data.manifest in
tests/test_zarr_crops.py. Independent of the NIfTI generator: it takes arrays.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cellmapseg.atomic import write_text
from cellmapseg.challenge_layout import EM_PATH, GROUNDTRUTH_PATH, dataset_path

MANIFEST_COLUMNS = ("crop_name", "dataset", "class_label", "voxel_size", "translation", "shape")
ABSENT, PRESENT, UNKNOWN = 0, 1, 255
SEMANTIC_ENCODING = {"absent": ABSENT, "present": PRESENT, "unknown": UNKNOWN}
INSTANCE_ENCODING = {"absent": ABSENT, "unknown": UNKNOWN}
SCHEMA_VERSION = "0.1.1"  # cellmap-schemas CropGroupAttrs
GRID_TOL = 0.01  # voxels

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class LabelCrop:
    """A training crop: one array per class on one grid (translation: first voxel's centre)."""

    crop: int
    voxel_size: Triple
    translation: Triple
    labels: Mapping[str, np.ndarray]  # class -> 0/1 (semantic) or ids (instance), z y x
    unknown: tuple[str, ...] = ()  # held, not annotated: written all UNKNOWN
    grid_shape: tuple[int, int, int] | None = None  # required where `labels` is empty

    @property
    def shape(self) -> tuple[int, int, int]:
        shapes = {np.shape(a) for a in self.labels.values()}
        if self.grid_shape is not None:  # a crop annotating nothing holds unknown classes only
            shapes.add(tuple(self.grid_shape))
        if len(shapes) != 1:
            raise ValueError(f"crop {self.crop}: class arrays have shapes {sorted(shapes)}")
        return shapes.pop()


@dataclass(frozen=True)
class UnlabelledCrop:
    """A test crop: its grid and the classes it is scored on; no labels are written."""

    crop: int
    voxel_size: Triple
    translation: Triple
    shape: tuple[int, int, int]
    classes: tuple[str, ...]


@dataclass(frozen=True)
class ZarrDataset:
    name: str  # e.g. jrc_synth-1
    em: np.ndarray  # uint8, z y x, at voxel_size (level s0)
    voxel_size: Triple
    translation: Triple = (0.0, 0.0, 0.0)  # centre of EM voxel 0, as in the challenge's data
    crops: tuple[LabelCrop, ...] = ()
    test_crops: tuple[UnlabelledCrop, ...] = ()
    instance: frozenset[str] = field(default_factory=frozenset)  # classes holding ids


def _multiscales(paths: Sequence[str], voxel_sizes: Sequence[Sequence[float]],
                 translations: Sequence[Sequence[float]], name: str) -> dict[str, Any]:
    return {"multiscales": [{
        "version": "0.4", "name": name,
        "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        "datasets": [{"path": p, "coordinateTransformations": [
            {"type": "scale", "scale": [float(v) for v in vs]},
            {"type": "translation", "translation": [float(t) for t in tr]}]}
            for p, vs, tr in zip(paths, voxel_sizes, translations, strict=True)]}]}


def _array(group: zarr.Group, path: str, data: np.ndarray, chunks: int) -> zarr.Array:
    array = group.create_array(path, shape=data.shape, dtype=data.dtype,
                               chunks=tuple(min(chunks, n) for n in data.shape), fill_value=0,
                               overwrite=True,
                               chunk_key_encoding={"name": "v2", "separator": "/"})
    array[...] = data
    return array


def halved(em: np.ndarray) -> np.ndarray:
    """Level s1 of an EM level: means of 2 x 2 x 2 blocks (an odd last voxel is dropped)."""
    n = np.asarray(em.shape) // 2
    total = np.zeros(tuple(n), np.uint16 if em.dtype == np.uint8 else np.float32)  # exact
    for z, y, x in itertools.product((0, 1), repeat=3):  # one strided add per block position
        total += em[z: 2 * n[0]: 2, y: 2 * n[1]: 2, x: 2 * n[2]: 2]
    return np.rint(total / np.float32(8)).astype(em.dtype)


def _write_em(group: zarr.Group, ds: ZarrDataset, chunks: int) -> None:
    em = np.asarray(ds.em)
    if em.dtype != np.uint8 or em.ndim != 3:
        raise ValueError(f"{ds.name}: EM must be a 3-D uint8 array, got {em.dtype} {em.shape}")
    vs = np.asarray(ds.voxel_size, float)
    tr = np.asarray(ds.translation, float)
    em_group = group.require_group(EM_PATH)
    _array(em_group, "s0", em, chunks)
    _array(em_group, "s1", halved(em), chunks)
    # s1's first voxel is the mean of s0's first two: its centre lies half an s0 voxel on.
    em_group.attrs.update(_multiscales(["s0", "s1"], [vs, 2 * vs], [tr, tr + vs / 2],
                                       "fibsem-uint8"))


def _check_alignment(ds: ZarrDataset, crop: LabelCrop | UnlabelledCrop) -> None:
    """A crop's voxel edges must fall on the EM's grid at the finer of the two voxel sizes
    (its translation need not be a multiple of its voxel size)."""
    vs, em_vs = np.asarray(crop.voxel_size, float), np.asarray(ds.voxel_size, float)
    start = np.asarray(crop.translation) - vs / 2
    em_start = np.asarray(ds.translation) - em_vs / 2
    offset = (start - em_start) / np.minimum(vs, em_vs)
    if np.any(np.abs(offset - np.round(offset)) > GRID_TOL):
        raise ValueError(f"{ds.name} crop {crop.crop}: the crop grid (first voxel edge at "
                         f"{start.tolist()} nm) is not aligned with the EM grid")


def _annotation(name: str, instance: bool) -> dict[str, Any]:
    return {"class_name": name, "annotation_type": {
        "type": "instance_segmentation" if instance else "semantic_segmentation",
        "encoding": dict(INSTANCE_ENCODING if instance else SEMANTIC_ENCODING)}}


def _write_class(crop_group: zarr.Group, crop: LabelCrop, name: str, data: np.ndarray,
                 instance: bool, chunks: int) -> None:
    data = np.asarray(data, dtype=np.uint8)
    counts = {"absent": int(np.count_nonzero(data == ABSENT)),
              "unknown": int(np.count_nonzero(data == UNKNOWN))}
    if not instance and sum(counts.values()) + np.count_nonzero(data == PRESENT) != data.size:
        raise ValueError(f"crop {crop.crop} class {name}: a semantic class holds 0, 1 or 255")
    group = crop_group.require_group(name)
    array = _array(group, "s0", data, chunks)
    meta = _annotation(name, instance)
    group.attrs.update({**_multiscales(["s0"], [crop.voxel_size], [crop.translation], name),
                        "cellmap": {"annotation": meta}})
    array.attrs.update({"cellmap": {"annotation": {**meta, "complement_counts": counts}}})


def _write_crop(group: zarr.Group, ds: ZarrDataset, crop: LabelCrop, chunks: int) -> None:
    _check_alignment(ds, crop)
    shape = crop.shape
    crop_group = group.require_group(f"{GROUNDTRUTH_PATH}/crop{crop.crop}")
    names = [*crop.labels, *crop.unknown]
    crop_group.attrs.update({"cellmap": {"annotation": {
        "version": SCHEMA_VERSION, "name": f"crop{crop.crop}", "description": None,
        "created_by": [], "created_with": [], "start_date": None, "end_date": None,
        "duration_days": None, "protocol_uri": None, "class_names": names}}})
    for name, data in crop.labels.items():
        _write_class(crop_group, crop, name, data, name in ds.instance, chunks)
    for name in crop.unknown:
        _write_class(crop_group, crop, name, np.full(shape, UNKNOWN, np.uint8),
                     name in ds.instance, chunks)


def write_dataset(root: str | os.PathLike, ds: ZarrDataset, chunks: int = 32) -> Path:
    """Write `ds` under root/<name>/<name>.zarr (replacing what is there); return that path."""
    path = dataset_path(root, ds.name).resolve()
    group = zarr.open_group(path, mode="w", zarr_format=2)
    _write_em(group, ds, chunks)
    for crop in ds.crops:
        _write_crop(group, ds, crop, chunks)
    for test in ds.test_crops:
        _check_alignment(ds, test)
    return path


def _list(values: Iterable[float | int]) -> str:
    return "[" + ";".join(str(v) for v in values) + "]"


def _row(crop: int, dataset: str, name: str, voxel_size: Sequence[float],
         translation: Sequence[float], shape: Sequence[int]) -> str:
    return ",".join((str(crop), dataset, name, _list(float(v) for v in voxel_size),
                     _list(float(t) for t in translation), _list(int(n) for n in shape)))


def manifest_text(rows: Iterable[str]) -> str:
    return "\n".join((",".join(MANIFEST_COLUMNS), *rows)) + "\n"


def manifest_rows(datasets: Iterable[ZarrDataset], split: str) -> list[str]:
    """Rows of the "train" manifest (each crop's annotated classes) or the "test" one (each
    test crop's scored classes)."""
    if split == "train":
        return [_row(c.crop, ds.name, name, c.voxel_size, c.translation, c.shape)
                for ds in datasets for c in ds.crops for name in c.labels]
    if split == "test":
        return [_row(c.crop, ds.name, name, c.voxel_size, c.translation, c.shape)
                for ds in datasets for c in ds.test_crops for name in c.classes]
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def write_manifests(train_path: str | os.PathLike, test_path: str | os.PathLike,
                    datasets: Sequence[ZarrDataset]) -> None:
    write_text(train_path, manifest_text(manifest_rows(datasets, "train")))
    write_text(test_path, manifest_text(manifest_rows(datasets, "test")))
