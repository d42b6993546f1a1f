"""Crop manifests in the challenge's CSV format (its utils/train_crop_manifest.csv and
test_crop_manifest.csv): one row per crop x class,
`crop_name,dataset,class_label,voxel_size,translation,shape`, lists written `[a;b;c]` in z, y, x
order, voxel sizes and translations in nm (the translation is the first voxel's centre, as in
OME-NGFF). The test manifest is what a submission must match, array by array.

Every malformed row is reported, one line each naming the file, line and column, before
anything is used.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellmapseg.atomic import write_text
from cellmapseg.errors import InputError

COLUMNS = ("crop_name", "dataset", "class_label", "voxel_size", "translation", "shape")


@dataclass(frozen=True)
class Grid:
    """A regular grid in world space (nm, z y x): what every array of a crop carries."""

    voxel_size: tuple[float, float, float]
    translation: tuple[float, float, float]  # centre of voxel (0, 0, 0)
    shape: tuple[int, int, int]

    @property
    def start(self) -> np.ndarray:
        """The world coordinate of the box's low corner (the first voxel's edge)."""
        return np.asarray(self.translation) - np.asarray(self.voxel_size) / 2

    @property
    def stop(self) -> np.ndarray:
        return self.start + np.asarray(self.voxel_size) * np.asarray(self.shape)


@dataclass(frozen=True)
class ManifestRow:
    crop: str  # the manifest's crop_name, e.g. "557"
    dataset: str
    class_label: str
    grid: Grid

    @property
    def crop_id(self) -> str:
        """The crop's group name in a store or submission, e.g. crop557."""
        return f"crop{self.crop}"


def _triple(text: str, kind: type, where: str, column: str) -> tuple | str:
    """'[a;b;c]' -> (a, b, c) of `kind`, or a problem line."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        return f"{where}: {column} {text!r} is not a list written [z;y;x]"
    parts = body[1:-1].split(";")
    try:
        values = tuple(kind(p.strip()) for p in parts)
    except ValueError:
        return f"{where}: {column} {text!r} holds a value that is not {kind.__name__}"
    if len(values) != 3:
        return f"{where}: {column} {text!r} has {len(values)} values, expected 3 (z;y;x)"
    if not all(math.isfinite(v) for v in values):
        return f"{where}: {column} {text!r} is not finite"
    return values


def _row(fields: dict[str, str], where: str, problems: list[str]) -> ManifestRow | None:
    crop, dataset, label = (fields[c].strip() for c in COLUMNS[:3])
    if not crop.isdigit():
        problems.append(f"{where}: crop_name {crop!r} is not a crop number")
    if not dataset or not label:
        problems.append(f"{where}: dataset and class_label must not be empty")
    vs = _triple(fields["voxel_size"], float, where, "voxel_size")
    tr = _triple(fields["translation"], float, where, "translation")
    shape = _triple(fields["shape"], int, where, "shape")
    for value in (vs, tr, shape):
        if isinstance(value, str):
            problems.append(value)
    if any(isinstance(v, str) for v in (vs, tr, shape)):
        return None
    if min(vs) <= 0 or min(shape) <= 0:
        problems.append(f"{where}: voxel_size and shape must be positive, got {list(vs)}, "
                        f"{list(shape)}")
        return None
    return ManifestRow(crop, dataset, label, Grid(vs, tr, shape))


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """The rows of a crop manifest, in file order. Raises InputError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: crop manifest not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = tuple(reader.fieldnames or ())
        if header != COLUMNS:
            raise InputError(f"{path}: header {','.join(header)!r} is not {','.join(COLUMNS)!r}")
        problems: list[str] = []
        rows = [_row(fields, f"{path}:{reader.line_num}", problems) for fields in reader]
    seen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        if row is not None and seen.setdefault((row.crop, row.class_label), i) != i:
            problems.append(f"{path}: crop {row.crop} lists class {row.class_label} twice")
    if problems:
        raise InputError("\n".join(problems))
    if not rows:
        raise InputError(f"{path}: crop manifest has no rows")
    return [r for r in rows if r is not None]


def _list(values: Sequence[float | int]) -> str:
    return "[" + ";".join(repr(float(v)) if isinstance(v, float) else str(v)
                          for v in values) + "]"


def manifest_text(rows: Iterable[ManifestRow]) -> str:
    lines = [",".join(COLUMNS)]
    for r in rows:
        g = r.grid
        lines.append(",".join((r.crop, r.dataset, r.class_label, _list(g.voxel_size),
                               _list(g.translation), _list(g.shape))))
    return "\n".join(lines) + "\n"


def write_manifest(path: str | os.PathLike, rows: Iterable[ManifestRow]) -> None:
    write_text(Path(path), manifest_text(rows))


def by_crop(rows: Iterable[ManifestRow]) -> dict[str, list[ManifestRow]]:
    """{crop_id: its rows}, crops in first-seen order."""
    out: dict[str, list[ManifestRow]] = {}
    for r in rows:
        out.setdefault(r.crop_id, []).append(r)
    for crop_id, crop_rows in out.items():
        datasets = {r.dataset for r in crop_rows}
        if len(datasets) > 1:
            raise InputError(f"crop manifest: {crop_id} is listed under several datasets "
                             f"{sorted(datasets)}")
    return out


def region(rows: Sequence[ManifestRow]) -> tuple[np.ndarray, np.ndarray]:
    """The world box (start, stop in nm) holding every class grid of one crop: what prediction
    must cover so that each class can be brought to its own grid."""
    starts = np.min([r.grid.start for r in rows], axis=0)
    stops = np.max([r.grid.stop for r in rows], axis=0)
    return starts, stops
