"""Scoring at the ground truth's own resolution, as the challenge server does (its scoring.py
`score_label` at 6b9ad68): each class of a crop is scored against its ground truth in the
challenge's Zarr layout (challenge_layout: `<root>/<dataset>/<dataset>.zarr/recon-1/labels/
groundtruth/crop<N>/<class>/`, an OME-NGFF multiscale, finest level), on the grid the train
manifest gives it; the prediction (on the training grid, with `voxel_size` and `translation`
attributes) is brought to that grid by the server's own rules (data.resample.match_crop_space:
nearest for instance classes, linear + 0.5 for semantic ones, then placed and padded).

Truth. A class's truth is the crop's own array of that name: its foreground voxels
(zarr_crops.Annotation.foreground, the cellmap "annotation" encoding; "unknown" is not
foreground). A group class the crop holds no array of is the union of its members' truths,
which must all lie on one grid. Instance truths: an array whose encoding has no "present"
value holds instance ids, and its instances are those ids (the server matches truth ids as
they are; here they are renumbered 1..n in ascending id order, which is the server's
numbering whenever its ids are 1..n); a truth that is a mask (a union of semantic members, or
an array encoded with "present") has the 26-connected components of the mask as instances, as
the NIfTI route does.

Mask. scoring.py:277-284 (6b9ad68), in `score_label` after `match_crop_space`:
    mask_path = truth_path / crop_name / f"{label_name}_mask"
    if mask_path.exists():
        # Mask out uncertain regions resulting from low-res ground truth annotations
        mask = ...  (line 281: the array at mask_path, read whole)
        pred_label = pred_label * mask
        truth_label = truth_label * mask
It is looked up by the scored label's own name, next to the label, after the prediction has
been brought to the truth's grid, and it zeroes both prediction and truth wherever it is 0:
a masked voxel is then background on both sides (neither tp, fp nor fn; a masked part of a
predicted object is cut away before the connected components are taken). The distance cap
and everything else still use the whole grid. Here a crop's `{label}_mask` (a plain array or
a multiscale group, finest level, on the label's grid) keeps the voxels where it is nonzero
and zeroes the others, the same as the product for a 0/1 mask.

Every problem (crop or class missing in the Zarr data, a class grid missing from the manifest
or disagreeing with the Zarr level, members on different grids, a prediction without its
geometry attributes or too large for its grid) is one InputError line naming the crop, class
or file, raised while planning, before any voxel is read.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cellmapseg.blockwise import ScratchArray, slices, spans
from cellmapseg.challenge_layout import crop_key, crop_path
from cellmapseg.classes import Ontology
from cellmapseg.data.manifest import Grid, ManifestRow, read_manifest
from cellmapseg.data.ngff import Level, describe, finest, is_multiscale
from cellmapseg.data.resample import MAX_VOLUME_RATIO
from cellmapseg.data.zarr_crops import Annotation, crop_class_names, open_dataset, read_annotation
from cellmapseg.errors import InputError
from cellmapseg.evaluate.instance import InstanceScore, max_distance, score_against_ids

GRID_TOL = 0.01  # voxels: the challenge's metadata rounds coordinates to 0.01 nm
VOXEL_RTOL = 1e-3


@dataclass(frozen=True)
class ZarrTruth:
    """Where the ground truth lives: the data root of the challenge's Zarr layout and the train
    manifest's rows (one per crop and class: the class's grid)."""

    root: Path
    rows: tuple[ManifestRow, ...]
    placement: str = "official"  # resample.match_crop_space's rule 3: the packer's choice

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "rows", tuple(self.rows))

    @classmethod
    def read(cls, root: str | Path, manifest: str | Path, placement: str = "official"
             ) -> ZarrTruth:
        return cls(Path(root), tuple(read_manifest(manifest)), placement)

    def grid(self, dataset: str, crop_id: str, name: str) -> Grid | None:
        """The manifest's grid of class `name` in crop `crop_id` (crop<N>) of `dataset`."""
        key = crop_key(crop_id)
        for row in self.rows:
            if row.dataset == dataset and row.crop_id == key and row.class_label == name:
                return row.grid
        return None


# ------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Part:
    """One truth array: a class's finest level and how its values encode the class."""

    array: zarr.Array
    annotation: Annotation
    where: str


@dataclass(frozen=True)
class ClassTruth:
    """One class's truth on its grid: the union of the foreground of `parts`, times `mask`."""

    name: str
    grid: Grid
    parts: tuple[Part, ...]
    ids: bool  # a single instance-id array: its ids are the instances
    mask: Any  # zarr.Array or None
    where: str  # the crop group's location, for messages

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.parts[0].array.chunks)


@dataclass(frozen=True)
class Prediction:
    """A prediction array and the grid it sits on (its voxel_size and translation)."""

    array: zarr.Array
    voxel_size: tuple[float, float, float]
    translation: tuple[float, float, float]
    where: str


def _nm(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def _same_grid(a: Grid, b: Grid) -> bool:
    vs = np.asarray(a.voxel_size, float)
    return (tuple(a.shape) == tuple(b.shape)
            and np.allclose(vs, b.voxel_size, rtol=VOXEL_RTOL, atol=0.0)
            and np.allclose(a.translation, b.translation, rtol=0.0,
                            atol=GRID_TOL * float(vs.min())))


def _grid_text(g: Grid | Level) -> str:
    return (f"voxel size {_nm(g.voxel_size)} nm, translation {_nm(g.translation)} nm, "
            f"shape {list(g.shape)}")


def _level_array(node: Any, where: str, what: str) -> tuple[zarr.Array, Level | None, str]:
    """A class's (or mask's) array: the finest level of a multiscale group, or a plain 3-D
    array (as the server's truth store holds them)."""
    if is_multiscale(node):
        level = finest(node, where)
        return node[level.path], level, f"{where}/{level.path}"
    if isinstance(node, zarr.Array) and node.ndim == 3:
        return node, None, where
    raise InputError(f"{where}: {what} is neither an OME-NGFF multiscale group nor a 3-D array")


def _on_grid(array: zarr.Array, level: Level | None, grid: Grid, where: str, what: str) -> None:
    if array.dtype.kind not in "biu":
        raise InputError(f"{where}: {what} has dtype {array.dtype}, not an integer or bool label")
    if level is not None and not _same_grid(Grid(level.voxel_size, level.translation,
                                                 level.shape), grid):
        raise InputError(f"{where}: {what} lies on {_grid_text(level)}, but the train manifest "
                         f"gives {_grid_text(grid)}")
    if tuple(array.shape) != tuple(grid.shape):
        raise InputError(f"{where}: {what} has shape {list(array.shape)}, but the train "
                         f"manifest gives {list(grid.shape)}")


def _manifest_grid(truth: ZarrTruth, dataset: str, crop_id: str, name: str, where: str) -> Grid:
    grid = truth.grid(dataset, crop_id, name)
    if grid is None:
        raise InputError(f"{where}: class {name} of {crop_key(crop_id)} (dataset {dataset}) "
                         "has no grid in the train manifest")
    return grid


def _part(crop: zarr.Group, name: str, grid: Grid, where: str) -> Part:
    at = f"{where}/{name}"
    array, level, array_where = _level_array(crop[name], at, f"class {name}")
    _on_grid(array, level, grid, array_where, f"class {name}")
    return Part(array, read_annotation(crop[name].attrs, at), array_where)


def _mask(crop: zarr.Group, name: str, grid: Grid, where: str) -> zarr.Array | None:
    key = f"{name}_mask"
    if key not in crop:
        return None
    at = f"{where}/{key}"
    array, level, array_where = _level_array(crop[key], at, f"mask of class {name}")
    _on_grid(array, level, grid, array_where, f"mask of class {name}")
    return array


def plan_class(truth: ZarrTruth, crop: zarr.Group, held: Sequence[str], dataset: str,
               crop_id: str, name: str, ontology: Ontology, where: str) -> ClassTruth:
    """The truth of class `name` in one crop (`held`: the classes the crop holds)."""
    if name in held:
        grid = _manifest_grid(truth, dataset, crop_id, name, where)
        part = _part(crop, name, grid, where)
        ids = ontology.is_instance(name) and "present" not in part.annotation.encoding
        return ClassTruth(name, grid, (part,), ids, _mask(crop, name, grid, where), where)
    members = [ontology.atomic[c] for c in ontology.members(name)]
    if not ontology.is_group(name) or any(m not in held for m in members):
        lacking = "" if not ontology.is_group(name) else \
            f" (nor all of its members {', '.join(members)})"
        raise InputError(f"{where}: class {name} missing{lacking} (crop {crop_key(crop_id)} "
                         f"of dataset {dataset})")
    grids = {m: _manifest_grid(truth, dataset, crop_id, m, where) for m in members}
    grid = truth.grid(dataset, crop_id, name) or grids[members[0]]
    for m, g in grids.items():
        if not _same_grid(g, grid):
            raise InputError(f"{where}: group class {name} has no array of its own and its "
                             f"member {m} lies on {_grid_text(g)}, not on {_grid_text(grid)}: "
                             "the union of its members is undefined")
    parts = tuple(_part(crop, m, grids[m], where) for m in members)
    return ClassTruth(name, grid, parts, False, _mask(crop, name, grid, where), where)


def plan_crop(truth: ZarrTruth, dataset: str, crop_id: str, names: Sequence[str],
              ontology: Ontology) -> dict[str, ClassTruth]:
    """The truth of each class `names` of one crop, from metadata only."""
    group = open_dataset(truth.root, dataset)
    where = f"{describe(group)}/{crop_path(crop_id)}"
    node = group.get(crop_path(crop_id))
    if not isinstance(node, zarr.Group):
        raise InputError(f"{where}: {crop_key(crop_id)} of dataset {dataset} not found")
    # the classes it lists (or its subgroups), and plain arrays, as the server's store holds
    held = [n for n in (*crop_class_names(node, where), *node.array_keys()) if n in node]
    return {n: plan_class(truth, node, held, dataset, crop_id, n, ontology, where)
            for n in names}


def prediction(array: zarr.Array, cls: ClassTruth, where: str) -> Prediction:
    """The prediction's grid from its attributes; InputError where one is missing or the
    array is more than the server accepts for the truth's grid."""
    attrs = dict(array.attrs)
    missing = [k for k in ("voxel_size", "translation") if k not in attrs]
    if missing:
        raise InputError(f"{where}: attribute {' and '.join(missing)} missing; the prediction's "
                         "grid is unknown, so it cannot be brought to the ground truth's")
    try:
        vs = tuple(float(v) for v in attrs["voxel_size"])
        tr = tuple(float(v) for v in attrs["translation"])
    except (TypeError, ValueError):
        vs, tr = (), ()
    if len(vs) != 3 or len(tr) != 3 or min(vs) <= 0 or not np.isfinite(tr).all():
        raise InputError(f"{where}: attributes voxel_size {attrs['voxel_size']!r} and "
                         f"translation {attrs['translation']!r} are not three numbers (z, y, x)")
    ratio = float(np.prod(array.shape, dtype=float)) / float(np.prod(cls.grid.shape, dtype=float))
    if ratio > MAX_VOLUME_RATIO:
        raise InputError(f"{where}: {ratio:.1f}x the voxels of the ground-truth grid "
                         f"{list(cls.grid.shape)} of class {cls.name} (the challenge refuses "
                         f"more than {MAX_VOLUME_RATIO}x)")
    return Prediction(array, vs, tr, where)  # type: ignore[arg-type]


def covers(pred: Prediction, grid: Grid) -> bool:
    """Whether the prediction's box holds the truth grid's box (else the server pads it with
    background: worth a warning, not an error)."""
    vs = np.asarray(pred.voxel_size)
    start = np.asarray(pred.translation) - vs / 2
    stop = start + vs * np.asarray(pred.array.shape)
    tol = GRID_TOL * float(min(grid.voxel_size))
    return bool((start <= grid.start + tol).all() and (stop >= grid.stop - tol).all())


# -------------------------------------------------------------------------- block views
class TruthMask:
    """A class's truth as 0/1 (uint8), read a region at a time: union of the parts'
    foreground, zero where the mask is."""

    def __init__(self, cls: ClassTruth) -> None:
        self.cls = cls
        self.shape = tuple(cls.grid.shape)
        self.chunks = cls.chunks

    def __getitem__(self, key: Any) -> np.ndarray:
        first, *rest = self.cls.parts
        out = first.annotation.foreground(np.asarray(first.array[key]))
        for part in rest:
            out |= part.annotation.foreground(np.asarray(part.array[key]))
        if self.cls.mask is not None:
            out &= np.asarray(self.cls.mask[key]) != 0
        return out.astype(np.uint8)


class Masked:
    """`values` zeroed where `mask` is 0 (the server's `pred_label * mask`), per region."""

    def __init__(self, values: Any, mask: Any, chunks: Sequence[int]) -> None:
        self.values, self.mask = values, mask
        self.shape = tuple(values.shape)
        self.dtype = values.dtype
        self.chunks = tuple(chunks)

    def __getitem__(self, key: Any) -> np.ndarray:
        v = np.asarray(self.values[key])
        if self.mask is None:
            return v
        return np.where(np.asarray(self.mask[key]) != 0, v, np.zeros((), v.dtype))


def truth_ids(cls: ClassTruth, out: Path, block: int) -> tuple[ScratchArray, int]:
    """An instance-id truth (one part) renumbered 1..n in ascending id order over its
    foreground voxels outside the mask, into a scratch array at `out`; and n. Two passes,
    one block at a time: memory follows the block and the number of instances."""
    (part,) = cls.parts
    shape = tuple(cls.grid.shape)
    edges = (block,) * 3

    def values(core: Any) -> np.ndarray:
        sl = slices(core)
        v = np.asarray(part.array[sl]).astype(np.int64)
        keep = part.annotation.foreground(v)
        if cls.mask is not None:
            keep &= np.asarray(cls.mask[sl]) != 0
        return np.where(keep, v, -1)

    present = np.empty(0, np.int64)
    for core in spans(shape, edges):
        v = values(core)
        present = np.union1d(present, np.unique(v[v >= 0]))
    ids = ScratchArray(out, shape, np.uint32)
    for core in spans(shape, edges):
        v = values(core)
        ranked = np.searchsorted(present, v) + 1
        ids[slices(core)] = np.where(v >= 0, ranked, 0).astype(np.uint32)
    return ids, int(present.size)


def score_truth_ids(pred_ids: Any, truth: ScratchArray, n_true: int,
                    voxel_size: Sequence[float], block: int, scratch: Path) -> InstanceScore:
    """instance.score_instances with the truth's own instance ids (1..n_true in `truth`)
    instead of the components of a truth mask."""
    voxel_size = tuple(float(v) for v in voxel_size)
    cap = max_distance(voxel_size, tuple(truth.shape))
    with tempfile.TemporaryDirectory(prefix=".instances-", dir=scratch) as tmp:
        return score_against_ids(pred_ids, truth, n_true, voxel_size, cap, block, Path(tmp))
