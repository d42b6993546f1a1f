"""One challenge crop for training, read from the challenge's Zarr layout at a training voxel size.

Layout (what the challenge's `csc fetch-data` writes; its config.py RAW_NAME and CROP_NAME):
  <root>/<dataset>/<dataset>.zarr/recon-1/em/fibsem-uint8/                  EM levels s0, s1, ...
  <root>/<dataset>/<dataset>.zarr/recon-1/labels/groundtruth/crop<N>/<class>/  one per class
Every group is an OME-NGFF 0.4 multiscale (see `ngff`); a class has its own voxel size and
translation, usually finer than the training level (4 nm or ~2 nm against 8 nm).

Metadata: cellmap-schemas' annotation convention (cellmap_schemas/annotation.py), read by the
challenge's loader (cellmap-data) and kept under the attribute key "cellmap" -> "annotation":
  crop group    CropGroupAttrs: "version" "0.1.1", "class_names" (the classes the crop holds), ...
  class group   AnnotationGroupAttrs: "class_name", "annotation_type": {"type":
                "semantic_segmentation" | "instance_segmentation", "encoding": {"absent": 0,
                "present": 1, "unknown": 255}} (instance: no "present"; values are ids)
  each level    AnnotationArrayAttrs: the same plus "complement_counts" {"absent": n, "unknown": m}
An atomic class of the ontology is annotated in a crop when the crop holds its group and no voxel
of its finest level is "unknown". A class unknown everywhere is not annotated; a class unknown in
part is not annotated either, because the annotation mask is per crop (DESIGN decision 3): a
partly known class would otherwise train its unknown voxels as negatives. Both are reported in
`CropPlan.skipped`. Foreground is the "present" value, or, without one (instances), every value
that is neither "absent" nor "unknown". A group without the attributes is read as the
challenge's own datasplit and loader read it: it is annotated because it exists, and value > 0
is foreground.

Grids: the training grid is the EM level's own grid, so image and label voxels coincide; the
crop covers the EM voxels it overlaps. Real crops need not start on an 8 nm line (the training
manifest puts crop 234 of jrc_cos7-1a, 2 nm voxels, at x = 10670 nm: its edge, 10669 nm, is no
multiple of 8 nm from an EM edge at -1 or -2 nm), so a class's grid must align with the
training grid only at its own voxel size: its first voxel edge must sit a whole number of its
voxels from a training voxel edge. Training voxels the crop covers in part are computed from
the part it covers.

Labels to the training grid (per class, from its finest level; factor f = training / class voxel
size per axis must be a whole number, or its inverse, which repeats voxels): for each training
voxel v, p_c(v) is the fraction of the class's fine voxels inside v (and the crop) that are
foreground, and the background fraction is 1 - sum_c p_c (atomic classes are disjoint: the
challenge splits them from one dense label). A class is *thin* at v when no voxel of it within
one training voxel of v is interior, interior meaning that the class fills the box of
2 * (f // 2) + 1 fine voxels per axis around it: a structure thinner than that (3 fine voxels
at f = 2, 5 at f = 4), a 1-voxel membrane at 4 nm say, has no interior. Then
  1. thin classes are kept wherever they have a fine voxel (p_c > 0), and win over thick ones;
     among thin classes the largest p_c wins;
  2. otherwise the plurality wins among the classes and background: a class with p_c >= 0.5
     always wins (the block-mean rule), and a class beats background on a tie.
  Remaining ties go to the lower channel (ontology order).
Why: the plain block-mean rule holds an axis-aligned 1-voxel membrane at f = 2 (p = 0.5) but
punches holes in oblique ones (wherever the sheet splits 1 + 3 or 2 + 2 between two voxels it
holds p < 0.5 in both), loses every 1-voxel membrane and 2-voxel ones that straddle two voxels
at f = 4, and a class that vanishes from training scores zero. Max-pooling every class
would keep them but dilate every organelle by up to a voxel; the interior test confines the
dilation to structures that would vanish otherwise. Thin structures come out one or two
training voxels thick and continuous (max-pooling keeps connectivity), thick ones by plurality.
The rule looks one training voxel beyond v, so labels are built block by block (bounded memory)
with a halo and give the same voxels for any block size.

Every problem is one InputError line naming the file, dataset, crop or key.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage
from zarr.core.sync import sync

from cellmapseg.challenge_layout import EM_PATH, GROUNDTRUTH_PATH, crop_key, dataset_path
from cellmapseg.classes import Ontology
from cellmapseg.data.ngff import Level, describe, finest, is_multiscale, level_at
from cellmapseg.errors import InputError

SEMANTIC, INSTANCE = "semantic_segmentation", "instance_segmentation"
POSSIBILITIES = ("absent", "unknown", "present")
GRID_TOL = 0.01  # voxels; the challenge's metadata rounds coordinates to 0.01 nm
BLOCK = 64  # training voxels per block edge while building labels
_TIE = 1e-6  # fractions of different class grids are compared as floats

Triple = tuple[float, float, float]
Box = tuple[slice, slice, slice]


# ------------------------------------------------------------------------------ annotation
@dataclass(frozen=True)
class Annotation:
    """How a class's values encode absent / unknown / present (cellmap-schemas' encoding)."""

    kind: str  # SEMANTIC or INSTANCE
    encoding: Mapping[str, int] = field(default_factory=lambda: {"absent": 0})

    def foreground(self, values: np.ndarray) -> np.ndarray:
        if "present" in self.encoding:
            return values == self.encoding["present"]
        out = np.ones(values.shape, dtype=bool)
        for key in ("absent", "unknown"):
            if key in self.encoding:
                out &= values != self.encoding[key]
        return out

    def count(self, values: np.ndarray, key: str) -> int:
        """How many voxels hold the value of `key` ("absent" or "unknown"; 0 without one)."""
        return int(np.count_nonzero(values == self.encoding[key])) if key in self.encoding \
            else 0


# The challenge's loader without metadata: an existing group is annotated, value > 0 is present.
PLAIN = Annotation(SEMANTIC, {"absent": 0})


def cellmap_annotation(attrs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The "cellmap" -> "annotation" attributes of a node, or None."""
    inner = attrs.get("cellmap")
    inner = inner.get("annotation") if isinstance(inner, Mapping) else None
    return inner if isinstance(inner, Mapping) else None


def read_annotation(attrs: Mapping[str, Any], where: str) -> Annotation:
    """The annotation type of a class group's attributes (PLAIN without any)."""
    meta = cellmap_annotation(attrs)
    if meta is None:
        return PLAIN
    kind = meta.get("annotation_type")
    kind = kind if isinstance(kind, Mapping) else {}
    encoding = kind.get("encoding")
    if kind.get("type") not in (SEMANTIC, INSTANCE) or not isinstance(encoding, Mapping):
        raise InputError(f"{where}: attribute cellmap.annotation.annotation_type {kind!r} is "
                         f"not {{'type': '{SEMANTIC}' or '{INSTANCE}', 'encoding': {{...}}}}")
    bad = [k for k, v in encoding.items() if k not in POSSIBILITIES
           or not isinstance(v, int) or isinstance(v, bool)]
    if bad or (kind["type"] == INSTANCE and "present" in encoding) or not encoding:
        raise InputError(f"{where}: attribute cellmap.annotation.annotation_type.encoding "
                         f"{dict(encoding)!r} must map some of {list(POSSIBILITIES)} to integer "
                         "values ('present' only for semantic segmentations)")
    return Annotation(kind["type"], dict(encoding))


def read_complement_counts(attrs: Mapping[str, Any], where: str) -> dict[str, int] | None:
    """A level array's cellmap.annotation.complement_counts ({"absent": n, "unknown": m}),
    or None where the array has none."""
    meta = cellmap_annotation(attrs)
    counts = meta.get("complement_counts") if meta is not None else None
    if counts is None:
        return None
    if not isinstance(counts, Mapping) or any(
            k not in ("absent", "unknown") or not isinstance(v, int) or v < 0
            for k, v in counts.items()):
        raise InputError(f"{where}: attribute cellmap.annotation.complement_counts {counts!r} "
                         "must map 'absent'/'unknown' to voxel counts")
    return dict(counts)


def crop_class_names(crop: zarr.Group, where: str) -> tuple[str, ...]:
    """The classes a crop holds: its cellmap.annotation.class_names, else its subgroups."""
    meta = cellmap_annotation(crop.attrs)
    if meta is None or "class_names" not in meta:
        return tuple(sorted(crop.group_keys()))
    names = meta["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{where}: attribute cellmap.annotation.class_names {names!r} is not "
                         "a list of class names")
    return tuple(names)


# -------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class CropGeometry:
    """A regular grid in world space (nm, z y x), translation at the first voxel's centre."""

    voxel_size: Triple
    translation: Triple
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, level: Level) -> CropGeometry:
        return cls(level.voxel_size, level.translation, level.shape)

    @property
    def start(self) -> np.ndarray:
        """The box's low corner: the first voxel's outer edge."""
        return np.asarray(self.translation) - np.asarray(self.voxel_size) / 2

    @property
    def stop(self) -> np.ndarray:
        return self.start + np.asarray(self.voxel_size) * np.asarray(self.shape)

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, stop) of the crop in world nm."""
        return self.start, self.stop

    @property
    def extent(self) -> str:
        return f"{_nm(self.start)}-{_nm(self.stop)} nm"


def _nm(values: Sequence[float] | np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _whole(x: np.ndarray) -> np.ndarray | None:
    """x rounded per element if every element is within GRID_TOL of a whole number."""
    r = np.round(x)
    return r.astype(np.int64) if np.all(np.abs(x - r) <= GRID_TOL) else None


def factors(fine: Sequence[float], coarse: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(down, up) per axis: coarse = fine * down where fine is finer, fine = coarse * up where
    it is coarser (each 1 elsewhere). ValueError where neither is a whole number."""
    fine_, coarse_ = np.asarray(fine, float), np.asarray(coarse, float)
    down = _whole(np.maximum(coarse_ / fine_, 1.0))
    up = _whole(np.maximum(fine_ / coarse_, 1.0))
    if down is None or up is None:
        raise ValueError("voxel sizes are not whole multiples of each other")
    return down, up


def em_box(geometry: CropGeometry, level: Level, dataset: str, crop: str) -> Box:
    """The level's voxels that the crop overlaps (index slices z, y, x). InputError where the
    crop's grid does not land on the level's (at the finer voxel size of the two) or the crop
    reaches outside the level's extent."""
    try:
        factors(geometry.voxel_size, level.voxel_size)
    except ValueError:
        raise InputError(f"dataset {dataset} {crop}: crop voxel size {_nm(geometry.voxel_size)} "
                         f"nm and EM {level.path} voxel size {_nm(level.voxel_size)} nm are not "
                         "whole multiples of each other") from None
    step = np.minimum(geometry.voxel_size, level.voxel_size)
    if _whole((geometry.start - level.start) / step) is None:
        raise InputError(f"dataset {dataset} {crop}: the crop grid (first voxel edge at "
                         f"{_nm(geometry.start)} nm) does not land on the EM {level.path} grid "
                         f"(edges at {_nm(level.start)} nm + multiples of {_nm(step)} nm)")
    vs = np.asarray(level.voxel_size)
    lo = np.floor((geometry.start - level.start) / vs + GRID_TOL).astype(np.int64)
    hi = np.ceil((geometry.stop - level.start) / vs - GRID_TOL).astype(np.int64)
    if (lo < 0).any() or (hi > np.asarray(level.shape)).any():
        raise InputError(f"dataset {dataset} {crop}: the crop ({geometry.extent}) reaches "
                         f"outside the EM {level.path} ({level.extent})")
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore


def box_geometry(level: Level, box: Box) -> CropGeometry:
    """The grid of `box` inside `level`: the training grid of a crop."""
    start = np.array([s.start for s in box])
    tr = np.asarray(level.translation) + start * np.asarray(level.voxel_size)
    return CropGeometry(level.voxel_size, tuple(float(t) for t in tr),  # type: ignore
                        tuple(s.stop - s.start for s in box))  # type: ignore


# ------------------------------------------------------------------------------------- I/O
def _read(array: Any, box: Sequence[slice], where: str) -> np.ndarray:
    try:
        return np.asarray(array[tuple(box)])
    except Exception as exc:  # each codec raises its own type for a damaged chunk
        raise InputError(f"{where}: cannot read voxels {_slices(box)} "
                         f"({type(exc).__name__}: {exc})") from exc


def _slices(box: Sequence[slice]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in box) + "]"


def missing_chunks(array: zarr.Array, box: Sequence[slice]) -> list[str]:
    """Keys of the chunks of `array` overlapping `box` that its store lacks (zarr reads a
    missing chunk as fill values, so an incomplete copy would pass unnoticed)."""
    ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(box, array.chunks,
                                                                   strict=True)]
    keys = [array.metadata.encode_chunk_key(idx) for idx in itertools.product(*ranges)]
    prefix = f"{array.path}/" if array.path else ""
    return [k for k in keys if not sync(array.store.exists(prefix + k))]


def read_em_region(em_level_array: Any, box: Sequence[slice], where: str | None = None
                   ) -> np.ndarray:
    """The EM voxels of `box`, reading only the chunks that overlap it. InputError naming the
    array and chunk where a chunk is missing or cannot be decoded."""
    if where is None:
        where = _array_where(em_level_array)
    if isinstance(em_level_array, zarr.Array):
        missing = missing_chunks(em_level_array, box)
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise InputError(f"{where}: chunk {missing[0]}{more} of the voxels "
                             f"{_slices(box)} is missing (an incomplete copy?)")
    return _read(em_level_array, box, where)


def _array_where(array: Any) -> str:
    if isinstance(array, zarr.Array):
        root = str(array.store).removeprefix("file://").rstrip("/")
        return f"{root}/{array.path}"
    return "array"


def _open(path: Path, what: str) -> zarr.Group:
    if not path.is_dir():
        raise InputError(f"{path}: {what} not found")
    try:
        return zarr.open_group(path, mode="r", zarr_format=2, use_consolidated=False)
    except (zarr.errors.NodeNotFoundError, FileNotFoundError, ValueError) as exc:
        raise InputError(f"{path}: {what} is not a Zarr v2 group ({exc})") from exc


def open_dataset(root: str | os.PathLike, dataset: str) -> zarr.Group:
    return _open(dataset_path(root, dataset).resolve(), f"dataset {dataset}")


def list_crops(root: str | os.PathLike, dataset: str) -> list[str]:
    """The crop<N> groups a dataset holds, in crop number order."""
    gt = dataset_path(root, dataset) / GROUNDTRUTH_PATH
    if not gt.is_dir():
        return []
    names = [p.name for p in gt.iterdir() if p.is_dir() and p.name.startswith("crop")]
    return sorted(names, key=lambda n: (len(n), n))


def _child(group: zarr.Group, key: str, where: str, what: str) -> Any:
    try:
        return group[key]
    except KeyError:
        raise InputError(f"{where}: {what} not found") from None


# ------------------------------------------------------------------------- classes to grid
@dataclass(frozen=True)
class ClassSource:
    """One annotated class of a crop mapped onto the training grid of the crop's box.

    The class's fine grid has voxel size training / down (after repeating each source voxel
    `up` times per axis); its first fine voxel sits `offset` fine voxels past the box's low
    corner."""

    name: str
    channel: int
    value: int  # label value in the training label
    array: Any  # zarr.Array or numpy array, z y x
    where: str  # the array's location, for messages
    annotation: Annotation
    down: tuple[int, int, int]
    up: tuple[int, int, int]
    offset: tuple[int, int, int]

    @property
    def fine_shape(self) -> np.ndarray:
        return np.asarray(self.array.shape) * np.asarray(self.up)


def map_class(name: str, channel: int, value: int, array: Any, level: Level,
              annotation: Annotation, grid: CropGeometry, where: str) -> ClassSource:
    """ClassSource of `array` (a class's level) on the training `grid`; InputError, naming
    `where` (the crop), the class and both voxel sizes, where the voxel sizes are not whole
    multiples, the grids do not align or the class reaches outside the grid."""
    down, up = class_factors(name, level.voxel_size, grid.voxel_size, where)
    fine = np.asarray(grid.voxel_size) / down
    offset = _whole((CropGeometry.of(level).start - grid.start) / fine)
    if offset is None:
        raise InputError(f"{where}: class {name} grid (first voxel edge at "
                         f"{_nm(CropGeometry.of(level).start)} nm, voxel size "
                         f"{_nm(level.voxel_size)} nm) does not align with the training grid "
                         f"(edges at {_nm(grid.start)} nm + multiples of {_nm(fine)} nm)")
    stop = offset + np.asarray(level.shape) * up
    if (offset < 0).any() or (stop > np.asarray(grid.shape) * down).any():
        raise InputError(f"{where}: class {name} ({CropGeometry.of(level).extent}) reaches "
                         f"outside the crop's training box ({grid.extent})")
    return ClassSource(name, channel, value, array, where=f"{where}/{name}/{level.path}",
                       annotation=annotation, down=_ints(down), up=_ints(up),
                       offset=_ints(offset))


def class_factors(name: str, voxel_size: Sequence[float], training: Sequence[float],
                  where: str) -> tuple[np.ndarray, np.ndarray]:
    """`factors` of a class's voxel size against the training one; InputError naming `where`
    (the crop), the class and both voxel sizes where they are not whole multiples."""
    try:
        return factors(voxel_size, training)
    except ValueError:
        raise InputError(f"{where}: class {name} voxel size {_nm(voxel_size)} nm is not a "
                         f"whole multiple or fraction of the training voxel size "
                         f"{_nm(training)} nm") from None


def _ints(values: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _blocks(shape: Sequence[int], block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for lo in itertools.product(*(range(0, n, block) for n in shape)):
        lo_ = np.asarray(lo)
        yield lo_, np.minimum(lo_ + block, shape)


def _box(lo: np.ndarray, hi: np.ndarray) -> Box:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore


def _fine(src: ClassSource, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fine voxels lo:hi of a class (its source voxels repeated `up` times per axis)."""
    up = np.asarray(src.up)
    raw_lo, raw_hi = lo // up, -(-hi // up)
    values = _read(src.array, _box(raw_lo, raw_hi), src.where)
    for axis, k in enumerate(src.up):
        if k > 1:
            values = np.repeat(values, k, axis=axis)
    return values[_box(lo - raw_lo * up, hi - raw_lo * up)]


def _cells(fine: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Sum of each f-block of a fine array (one strided add per position inside the block:
    several times faster than reducing a 6-D reshape)."""
    total = np.zeros(tuple(np.asarray(fine.shape) // f), np.int32)
    for at in itertools.product(*(range(k) for k in f)):
        total += fine[at[0]::f[0], at[1]::f[1], at[2]::f[2]]
    return total


@dataclass
class ValueCounts:
    """Absent and unknown voxels seen in a class's source array (each counted once)."""

    absent: int = 0
    unknown: int = 0


def _class_block(src: ClassSource, lo: np.ndarray, hi: np.ndarray,
                 seen: ValueCounts) -> tuple[np.ndarray, np.ndarray]:
    """(p, thin) of training voxels lo:hi: foreground fraction, and where the class is thin
    and present."""
    f, o, size = np.asarray(src.down), np.asarray(src.offset), src.fine_shape
    r = f // 2
    win_lo, win_hi = (lo - 1) * f - o, (hi + 1) * f - o  # one training voxel of halo
    read_lo, read_hi = np.clip(win_lo - r, 0, size), np.clip(win_hi + r, 0, size)
    nothing = np.zeros(tuple(hi - lo)), np.zeros(tuple(hi - lo), bool)
    if not (read_hi > read_lo).all():
        return nothing
    values = _fine(src, read_lo, read_hi)
    _count_own(src, values, lo * f - o - read_lo, hi * f - o - read_lo, seen)
    fg = src.annotation.foreground(values)
    if not fg.any():
        return nothing
    # Outside the crop counts as foreground so that the crop's faces make nothing thin.
    interior = ndimage.binary_erosion(fg, np.ones(tuple(2 * r + 1), bool),
                                      border_value=1) if r.any() else fg
    fg_w, int_w, in_w = (np.zeros(tuple((hi - lo + 2) * f), bool) for _ in range(3))
    put_lo, put_hi = np.maximum(read_lo, win_lo), np.minimum(read_hi, win_hi)
    src_box, dst_box = _box(put_lo - read_lo, put_hi - read_lo), \
        _box(put_lo - win_lo, put_hi - win_lo)
    fg_w[dst_box], int_w[dst_box], in_w[dst_box] = fg[src_box], interior[src_box], True
    inner = (slice(1, -1),) * 3
    count, covered = _cells(fg_w, f)[inner], _cells(in_w, f)[inner]
    thick = ndimage.maximum_filter(_cells(int_w, f) > 0, size=3, mode="constant")[inner]
    p = np.divide(count, covered, out=np.zeros(count.shape), where=covered > 0)
    return p, (count > 0) & ~thick


def _count_own(src: ClassSource, values: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               seen: ValueCounts) -> None:
    """Count the absent/unknown values of this block's own voxels (lo:hi of `values`,
    clipped), so that over all blocks each voxel counts once."""
    lo, hi = np.maximum(lo, 0), np.minimum(hi, values.shape)
    if (hi > lo).all():
        own = values[_box(lo, hi)]
        seen.absent += src.annotation.count(own, "absent")
        seen.unknown += src.annotation.count(own, "unknown")


def combine(p: np.ndarray, thin: np.ndarray, values: Sequence[int],
            dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """Training label from per-class fractions p (C, ...) and thin-and-present flags (C, ...):
    the module's rule (thin classes first, then plurality with background)."""
    if len(values) == 0:
        return np.zeros(p.shape[1:], dtype)
    lut = np.asarray(values, dtype)
    has_thin = thin.any(axis=0)
    pick_thin = np.argmax(np.where(thin, p, -1.0), axis=0)  # argmax: first = lower channel
    pick = np.argmax(p, axis=0)
    best = np.take_along_axis(p, pick[None], axis=0)[0]
    background = 1.0 - p.sum(axis=0)
    wins = (best > 0) & (best >= background - _TIE)
    idx = np.where(has_thin, pick_thin, pick)
    return np.where(has_thin | wins, lut[idx], 0).astype(dtype)


def label_region(sources: Sequence[ClassSource], lo: Sequence[int], hi: Sequence[int],
                 seen: Mapping[str, ValueCounts], block: int = BLOCK,
                 dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """Training label voxels lo:hi, block by block (each block's voxels depend on its own
    window only, so any tiling gives the same label); absent/unknown source voxels are added
    to `seen` as read (a repeated voxel once per copy: `settle_counts` divides at the end)."""
    lo_, hi_ = np.asarray(lo, int), np.asarray(hi, int)
    out = np.zeros(tuple(hi_ - lo_), dtype)
    values = [s.value for s in sources]
    for a, b in _blocks(tuple(hi_ - lo_), block):
        parts = [_class_block(s, lo_ + a, lo_ + b, seen[s.name]) for s in sources]
        p = np.stack([q for q, _ in parts]) if parts else np.zeros((0, *(b - a)))
        thin = np.stack([t for _, t in parts]) if parts else np.zeros(p.shape, bool)
        out[_box(a, b)] = combine(p, thin, values, dtype)
    return out


def new_counts(sources: Sequence[ClassSource]) -> dict[str, ValueCounts]:
    return {s.name: ValueCounts() for s in sources}


def settle_counts(sources: Sequence[ClassSource], seen: dict[str, ValueCounts]
                  ) -> dict[str, ValueCounts]:
    """Counts of each source voxel once, from counts of its repeated copies."""
    for s in sources:
        copies = math.prod(s.up)
        seen[s.name] = ValueCounts(seen[s.name].absent // copies, seen[s.name].unknown // copies)
    return seen


def grid_label(sources: Sequence[ClassSource], shape: Sequence[int], block: int = BLOCK,
               out: Any = None, dtype: np.dtype | type = np.uint8
               ) -> tuple[Any, dict[str, ValueCounts]]:
    """The training label of `shape` (block by block into `out`, a new array by default) and,
    per class, the absent/unknown voxels seen in its source (for checking against metadata)."""
    out = np.zeros(tuple(shape), dtype) if out is None else out
    seen = new_counts(sources)
    for lo, hi in _blocks(shape, block):
        out[_box(lo, hi)] = label_region(sources, lo, hi, seen, block, dtype)
    return out, settle_counts(sources, seen)


# ------------------------------------------------------------------------------ the crop
@dataclass(frozen=True)
class CropPlan:
    """What reading one crop takes, from metadata only (no voxel read except, for a class
    whose metadata declares an unknown value but gives no counts, a scan for it)."""

    dataset: str
    crop: str  # crop<N>
    where: str  # the crop group's location
    em: Any  # the EM array at the training level
    em_where: str
    box: Box  # the crop's voxels in that array
    geometry: CropGeometry  # the training grid of the box
    sources: tuple[ClassSource, ...]  # annotated classes, channel order
    counts: Mapping[str, Mapping[str, int]]  # complement_counts of each source's level
    skipped: tuple[tuple[str, str], ...]  # (class, why) held but not annotated
    label_dtype: np.dtype

    @property
    def annotated(self) -> tuple[int, ...]:
        return tuple(s.channel for s in self.sources)


@dataclass(frozen=True)
class TrainingCrop:
    dataset: str
    crop: str
    geometry: CropGeometry  # training grid: EM level voxel size, box translation and shape
    image: np.ndarray  # EM of the box, as stored (uint8)
    label: np.ndarray  # ontology label values, 0 background
    annotated: tuple[int, ...]  # channels the crop annotates
    skipped: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Held:
    name: str
    group: zarr.Group
    level: Level
    annotation: Annotation
    counts: dict[str, int] | None


def _held(crop: zarr.Group, name: str, where: str) -> _Held:
    node = _child(crop, name, where, f"class {name} listed in the crop's class_names")
    at = f"{where}/{name}"
    if not is_multiscale(node):
        kind = "an array" if isinstance(node, zarr.Array) else "a group without 'multiscales'"
        raise InputError(f"{at}: class group is {kind}, not an OME-NGFF multiscale")
    level = finest(node, at)
    array = node[level.path]
    return _Held(name, node, level, read_annotation(node.attrs, at),
                 read_complement_counts(array.attrs, f"{at}/{level.path}"))


def _unknown(held: _Held, where: str) -> int:
    """Unknown voxels of a class's finest level: from its counts, else by scanning it."""
    if "unknown" not in held.annotation.encoding:
        return 0
    if held.counts is not None and "unknown" in held.counts:
        return held.counts["unknown"]
    array, n = held.group[held.level.path], 0
    step = max(1, int(array.chunks[0]))
    for z in range(0, array.shape[0], step):
        box = (slice(z, min(z + step, array.shape[0])), slice(0, None), slice(0, None))
        n += held.annotation.count(_read(array, box, where), "unknown")
    return n


def _common_geometry(held: Sequence[_Held], where: str) -> CropGeometry:
    """The grid of the crop: every class must cover the same world box."""
    first = held[0]
    tol = GRID_TOL * float(min(first.level.voxel_size))
    for other in held[1:]:
        a, b = CropGeometry.of(first.level), CropGeometry.of(other.level)
        if not (np.allclose(a.start, b.start, atol=tol) and np.allclose(a.stop, b.stop, atol=tol)):
            raise InputError(f"{where}: class {other.name} covers {b.extent} but class "
                             f"{first.name} covers {a.extent}; a crop's classes must cover one "
                             "box")
    return CropGeometry.of(min(held, key=lambda h: float(np.prod(h.level.voxel_size))).level)


@dataclass(frozen=True)
class EMLevel:
    """A dataset's EM at one voxel size: the array, its grid, and its location."""

    array: Any
    level: Level
    where: str


def open_em(group: zarr.Group, dataset: str, voxel_size: Sequence[float], rtol: float = 1e-3
            ) -> EMLevel:
    """The EM level of an open dataset at `voxel_size`; InputError when it has none."""
    em_where = f"{describe(group)}/{EM_PATH}"
    em_group = _child(group, EM_PATH, em_where, f"EM group of dataset {dataset}")
    level = level_at(em_group, voxel_size, em_where, rtol)
    return EMLevel(em_group[level.path], level, f"{em_where}/{level.path}")


def plan_crop(root: str | os.PathLike, dataset: str, crop: str | int, ontology: Ontology,
              voxel_size: Sequence[float], rtol: float = 1e-3) -> CropPlan:
    """Everything needed to read crop `crop` of `dataset` at the training `voxel_size`."""
    group = open_dataset(root, dataset)
    base = describe(group)
    em = open_em(group, dataset, voxel_size, rtol)
    em_level = em.level
    key = crop_key(crop)
    where = f"{base}/{GROUNDTRUTH_PATH}/{key}"
    crop_group = _child(group, f"{GROUNDTRUTH_PATH}/{key}", where,
                        f"{key} of dataset {dataset}")
    names = crop_class_names(crop_group, where)
    held = [_held(crop_group, n, where) for n in ontology.atomic if n in names]
    kept, skipped = [], []
    for h in held:
        size = math.prod(h.level.shape)
        unknown = _unknown(h, f"{where}/{h.name}/{h.level.path}")
        if unknown == 0:
            kept.append(h)
        else:
            skipped.append((h.name, "unknown everywhere" if unknown >= size
                            else f"{unknown} of {size} voxels unknown"))
    for h in kept:  # before the box, so that the message names the class
        class_factors(h.name, h.level.voxel_size, em_level.voxel_size, where)
    geometry = _common_geometry(held or _others(crop_group, names, where), where)
    box = em_box(geometry, em_level, dataset, key)
    grid = box_geometry(em_level, box)
    sources = tuple(
        map_class(h.name, ontology.channel(h.name), ontology.labels[ontology.channel(h.name)],
                  h.group[h.level.path], h.level, h.annotation, grid, where) for h in kept)
    return CropPlan(dataset, key, where, em.array, em.where, box, grid, sources,
                    {h.name: h.counts or {} for h in kept}, tuple(skipped), ontology.label_dtype)


def _others(crop: zarr.Group, names: Sequence[str], where: str) -> list[_Held]:
    """The crop's multiscale class groups outside the ontology: its box when none of the
    ontology's classes is held."""
    for name in names:
        if is_multiscale(crop.get(name)):
            return [_held(crop, name, where)]
    raise InputError(f"{where}: the crop holds no class group (OME-NGFF multiscale)")


def crop_affine(plan: CropPlan) -> np.ndarray:
    """Voxel index (array axes) -> world nm, the first voxel's centre at the translation."""
    out = np.diag([*map(float, plan.geometry.voxel_size), 1.0])
    out[:3, 3] = plan.geometry.translation
    return out


def read_image(plan: CropPlan) -> np.ndarray:
    return read_em_region(plan.em, plan.box, plan.em_where)


def read_label(plan: CropPlan, block: int = BLOCK, out: Any = None,
               verify: bool = True) -> Any:
    """The crop's training label (into `out` when given). With `verify`, a class whose voxels
    disagree with its complement_counts (a missing or damaged chunk reads as fill values) is an
    InputError naming its array."""
    label, seen = grid_label(plan.sources, plan.geometry.shape, block, out, plan.label_dtype)
    if verify:
        verify_counts(plan, seen)
    return label


def verify_counts(plan: CropPlan, seen: Mapping[str, ValueCounts]) -> None:
    """InputError naming the array of a class whose voxels disagree with its metadata."""
    for src in plan.sources:
        _verify(src, plan.counts.get(src.name, {}), seen[src.name])


def _verify(src: ClassSource, counts: Mapping[str, int], seen: ValueCounts) -> None:
    for key in ("absent", "unknown"):
        expected = counts.get(key, 0 if key == "unknown" else None)
        found = getattr(seen, key)
        if key in src.annotation.encoding and expected is not None and found != expected:
            raise InputError(f"{src.where}: holds {found} {key} voxels but its "
                             f"complement_counts say {expected} (a missing or damaged chunk?)")


def read_training_crop(root: str | os.PathLike, dataset: str, crop: str | int,
                       ontology: Ontology, voxel_size: Sequence[float], block: int = BLOCK,
                       rtol: float = 1e-3) -> TrainingCrop:
    """Image and label of one crop on the EM's grid at `voxel_size`, and its annotated
    channels."""
    plan = plan_crop(root, dataset, crop, ontology, voxel_size, rtol)
    return TrainingCrop(plan.dataset, plan.crop, plan.geometry, read_image(plan),
                        read_label(plan, block), plan.annotated, plan.skipped)
