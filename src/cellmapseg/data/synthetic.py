"""Embedded synthetic CellMap-like dataset: EM-looking crops with 14-class organelle labels.

Lets the whole pipeline run (and a small 3D CNN learn something) on a machine without the real
data. Geometry follows the biology: cells in extracellular space, a plasma membrane shell, a
nucleus, and organelles with membrane/lumen pairs in the cytoplasm. Each crop is generated from
its own random stream seeded by (seed, crop index), so it does not depend on any other crop.
Like the real data, each crop annotates a subset of the classes and the label of every
unannotated class is zeroed; exactly one training crop annotates nothing (cf. crop380).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from cellmapseg.atomic import atomic_path, write_json
from cellmapseg.classes import CLASS_NAMES, NUM_CLASSES, annotation_frequency
from cellmapseg.config import SyntheticConfig

(ECS, PM, MITO_MEM, MITO_LUM, MITO_RIBO, GOLGI_MEM, GOLGI_LUM, VES_MEM, VES_LUM, ENDO_MEM,
 ENDO_LUM, ER_MEM, ER_LUM, NUC) = (CLASS_NAMES.index(n) + 1 for n in (
    "ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "golgi_mem", "golgi_lum", "ves_mem",
    "ves_lum", "endo_mem", "endo_lum", "er_mem", "er_lum", "nuc"))

# Classes annotated together: a membrane is never annotated without its lumen (and vice versa).
GROUPS: tuple[tuple[str, ...], ...] = (
    ("ecs",), ("pm",), ("mito_mem", "mito_lum"), ("mito_ribo",), ("golgi_mem", "golgi_lum"),
    ("ves_mem", "ves_lum"), ("endo_mem", "endo_lum"), ("er_mem", "er_lum"), ("nuc",),
)
_MITO = frozenset({CLASS_NAMES.index("mito_mem"), CLASS_NAMES.index("mito_lum")})
_RIBO = CLASS_NAMES.index("mito_ribo")

# Independent random streams: SeedSequence([seed, tag, index]).
_TAG_PLAN, _TAG_CROP, _TAG_LOOK = 0, 1, 2

_REF_VOXELS = 64**3  # organelle densities below are per 64^3 voxels
_DENSITY = {"golgi": 0.4, "mito": 10.0, "endo": 4.0, "ves": 30.0, "er": 10.0}
_TRIES = 6  # placement attempts per wanted object
_FORCE_TRIES = 60  # extra attempts for a kind the crop's annotations require
_PM_THICK = 2
_NUC_MARGIN = 3.0  # voxels of cytoplasm kept between the nucleus and the plasma membrane

# EM appearance per label value (index 0 = cytosol) before the PSF blur, which lightens thin
# membranes by ~40: membranes dark, lumens distinguishable but overlapping with another class.
_BASE = np.array(
    [150, 205, 32, 38, 112, 30, 40, 176, 35, 186, 40, 138, 45, 172, 128], dtype=np.float32)
_TEXTURE = np.array(  # texture amplitude per label value
    [8, 6, 3, 3, 10, 3, 3, 5, 3, 5, 3, 16, 3, 5, 8], dtype=np.float32)
_ENVELOPE = 50.0  # nuclear envelope (inside the nuc label)
_CHROMATIN_DROP = 45.0  # heterochromatin is darker than nucleoplasm
_PSF_SIGMA = 0.7
_GZIP_LEVEL = 1  # noisy float images barely compress; favour speed


@dataclass(frozen=True)
class CropPlan:
    index: int  # global, 0-based; the crop ID is index + 1
    split: str  # "training" or "validation"
    dataset: int  # 0-based
    shape: tuple[int, int, int]
    annotated: frozenset[int]  # channel indices (label value - 1)

    @property
    def dataset_name(self) -> str:
        return f"jrc_synth-{self.dataset + 1}"

    @property
    def stem(self) -> str:
        return f"{self.dataset_name}_crop{self.index + 1:03d}"


@dataclass(frozen=True)
class Appearance:
    """Per-dataset imaging conditions (staining/detector differences)."""

    gain: float
    offset: float
    noise_sd: float


def generate(cfg: SyntheticConfig, spacing_nm: tuple[float, float, float], out_dir: Path) -> Path:
    """Write images/, labels/ and datalist.json under out_dir; return the datalist path."""
    out_dir = Path(out_dir).resolve()
    looks = appearances(cfg)
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for plan in plan_crops(cfg):
        image, label = synthesize_crop(cfg, plan, looks[plan.dataset])
        image_path = out_dir / "images" / f"{plan.stem}_0000.nii.gz"
        label_path = out_dir / "labels" / f"{plan.stem}.nii.gz"
        _write_nifti(image_path, image, spacing_nm)
        _write_nifti(label_path, mask_unannotated(label, plan.annotated), spacing_nm)
        entries[plan.split].append({
            "image": str(image_path),
            "label": str(label_path),
            "annotated_classes": ",".join(map(str, sorted(plan.annotated))),
        })
    datalist = {
        "name": "cellmapseg-synthetic",
        "description": f"Synthetic CellMap-like FIB-SEM crops (seed {cfg.seed})",
        "modality": "EM",
        "sigmoid": True,
        "num_classes": NUM_CLASSES,
        "class_names": [{"name": n, "index": [i + 1]} for i, n in enumerate(CLASS_NAMES)],
        **entries,
    }
    path = out_dir / "datalist.json"
    write_json(path, datalist)  # last: its presence marks a complete dataset
    return path


def _rng(cfg: SyntheticConfig, tag: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([cfg.seed % (1 << 64), tag, index])


# ---------------------------------------------------------------- plan: splits, shapes, annotations


def plan_crops(cfg: SyntheticConfig) -> list[CropPlan]:
    """Splits, datasets, shapes and annotated classes of every crop (training first)."""
    rng = _rng(cfg, _TAG_PLAN)
    n = cfg.n_train + cfg.n_val
    large, small, empty = (int(i) for i in rng.choice(cfg.n_train, size=3, replace=False))
    jitter = rng.uniform(-cfg.shape_jitter, cfg.shape_jitter, size=(n, 3))
    shapes = [tuple(int(s) for s in np.maximum(np.rint(np.multiply(cfg.shape, 1 + j)), 8))
              for j in jitter]
    shapes[large], shapes[small] = tuple(cfg.large_shape), tuple(cfg.small_shape)
    annotated = [_draw_annotations(rng) for _ in range(n)]
    annotated[empty] = set()
    train = [i for i in range(cfg.n_train) if i != empty]
    _ensure_coverage(rng, annotated, train)
    _ensure_coverage(rng, annotated, list(range(cfg.n_train, n)))
    return [
        CropPlan(i, "training" if i < cfg.n_train else "validation", i % cfg.n_datasets,
                 shapes[i], frozenset(annotated[i]))
        for i in range(n)
    ]


def _channels(group: tuple[str, ...]) -> set[int]:
    return {CLASS_NAMES.index(name) for name in group}


def _draw_annotations(rng: np.random.Generator) -> set[int]:
    """Per-group draws following the real per-class frequencies; never empty."""
    chosen: set[int] = set()
    draws = rng.random(len(GROUPS))
    for group, u in zip(GROUPS, draws, strict=True):
        if group == ("mito_ribo",):  # mito ribosomes are annotated only within annotated mito
            p = annotation_frequency("mito_ribo") / annotation_frequency("mito_lum")
            p = p if _MITO.issubset(chosen) else 0.0
        else:
            p = max(annotation_frequency(name) for name in group)
        if u < p:
            chosen |= _channels(group)
    if not chosen:
        chosen = _closure(int(rng.integers(NUM_CLASSES)))
    return chosen


def _closure(channel: int) -> set[int]:
    """The channel's whole group, plus mito for mito_ribo."""
    group = next(g for g in GROUPS if CLASS_NAMES[channel] in g)
    return _channels(group) | (set(_MITO) if channel == _RIBO else set())


def _ensure_coverage(rng: np.random.Generator, annotated: list[set[int]], split: list[int]) -> None:
    """Rare classes (golgi: 7%) would otherwise be missing from a tiny split entirely."""
    for channel in range(NUM_CLASSES):
        lacking = [i for i in split if channel not in annotated[i]]
        if len(lacking) == len(split):
            annotated[lacking[int(rng.integers(len(lacking)))]] |= _closure(channel)


def mask_unannotated(label: np.ndarray, annotated: frozenset[int]) -> np.ndarray:
    """Zero the voxels of classes the crop does not annotate (as in the real label files)."""
    keep = np.array([v - 1 in annotated for v in range(NUM_CLASSES + 1)])
    return np.where(keep[label], label, 0).astype(np.uint8)


def appearances(cfg: SyntheticConfig) -> list[Appearance]:
    """Per-dataset gain/offset drawn from separate strata, so datasets always differ visibly."""
    rng = _rng(cfg, _TAG_LOOK)
    n = cfg.n_datasets
    offset_slot = rng.permutation(n) + rng.uniform(0.3, 0.7, n)
    gain_slot = rng.permutation(n) + rng.uniform(0.3, 0.7, n)
    noise = rng.uniform(4.0, 9.0, n)
    return [
        Appearance(gain=float(0.8 + 0.4 * g / n), offset=float(-30 + 60 * o / n),
                   noise_sd=float(s))
        for g, o, s in zip(gain_slot, offset_slot, noise, strict=True)
    ]


# ------------------------------------------------------------------------------------ geometry


@dataclass
class _Canvas:
    label: np.ndarray  # uint8 label values, painted in order
    cells: np.ndarray  # bool: inside a cell (plasma membrane included)
    free: np.ndarray  # bool: cytoplasm where an organelle may still go

    @property
    def shape(self) -> tuple[int, ...]:
        return self.label.shape


@dataclass(frozen=True)
class _Object:
    """An organelle as a signed distance (voxels, < 0 inside) on its bounding box."""

    box: tuple[slice, ...]
    d: np.ndarray
    mem_t: float  # membrane thickness
    mem: int
    lum: int

    def parts(self) -> np.ndarray:
        inner = np.where(self.d <= -self.mem_t, self.lum, self.mem)
        return np.where(self.d <= 0, inner, 0).astype(np.uint8)


# (rng, centre, crop shape) -> object
_Builder = Callable[[np.random.Generator, np.ndarray, tuple[int, ...]], _Object]


def synthesize_crop(
    cfg: SyntheticConfig, plan: CropPlan, look: Appearance
) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, full label uint8) of one crop; unannotated classes are not yet zeroed."""
    rng = _rng(cfg, _TAG_CROP, plan.index)
    typical = float(np.mean(cfg.shape))
    names = {CLASS_NAMES[c] for c in plan.annotated}
    canvas = _cell_canvas(rng, plan.shape, typical)
    if "nuc" in names or rng.random() < 0.5:
        nucleus = _nucleus(rng, canvas, typical)
        canvas.label[nucleus] = NUC
    canvas.free = ndi.binary_erosion((canvas.label == 0) & canvas.cells, border_value=1)
    scale = float(np.prod(plan.shape)) / _REF_VOXELS
    builders: dict[str, _Builder] = {
        "golgi": _golgi, "mito": _mito, "endo": _endosome, "ves": _vesicle}
    for kind, build in builders.items():  # painting order: big, rare objects claim space first
        forced = any(name.startswith(kind) for name in names)
        placed = _place(rng, canvas, build, int(rng.poisson(_DENSITY[kind] * scale)), forced)
        if kind == "mito":
            for mito in placed:
                _ribosomes(rng, canvas, mito)
    n_er = int(rng.poisson(_DENSITY["er"] * scale))
    _er(rng, canvas, max(n_er, int(any(n.startswith("er") for n in names))))
    image = _render(rng, canvas.label, look)
    return image, canvas.label


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], corr: float) -> np.ndarray:
    """Unit-variance noise correlated over ~corr voxels (gaussian-filtered white noise)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    smooth = ndi.gaussian_filter(white, corr / 2, truncate=2.5)  # short kernel: speed
    return (smooth - smooth.mean()) / (smooth.std() + 1e-6)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _cell_canvas(rng: np.random.Generator, shape: tuple[int, ...], typical: float) -> _Canvas:
    """1-3 blobby cells (possibly extending beyond the crop) in ECS, with plasma membrane."""
    n = int(rng.integers(1, 4))
    size = typical
    best: tuple[float, np.ndarray] | None = None
    for _ in range(12):  # resize until the crop shows a sensible amount of ECS
        ids = _cell_ids(rng, shape, n, size)
        ecs = float(np.mean(ids == 0))
        miss = max(0.1 - ecs, ecs - 0.4, 0.0)
        if best is None or miss < best[0]:
            best = (miss, ids)
        if miss == 0.0:
            break
        size *= 0.9 if ecs < 0.1 else 1.12
    ids = best[1]
    cells = np.zeros(shape, bool)
    pm = np.zeros(shape, bool)
    for i in range(1, n + 1):
        # Eroding each cell opens a thin ECS gap where two cells touch; border_value=1 keeps
        # the crop edge from looking like a cell boundary.
        body = ndi.binary_erosion(ids == i, border_value=1)
        inner = ndi.binary_erosion(body, iterations=_PM_THICK, border_value=1)
        cells |= body
        pm |= body & ~inner
    label = np.where(cells, np.where(pm, PM, 0), ECS).astype(np.uint8)
    return _Canvas(label, cells, np.zeros(shape, bool))


def _cell_ids(rng: np.random.Generator, shape: tuple[int, ...], n: int, size: float) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    best = np.full(shape, np.inf, np.float32)
    ids = np.zeros(shape, np.uint8)
    for i in range(1, n + 1):
        center = rng.uniform(-0.15, 1.15, 3) * np.array(shape)
        radii = rng.uniform(0.4, 0.8, 3) * size
        r2 = sum(((g - c) / r).astype(np.float32) ** 2
                 for g, c, r in zip(grid, center, radii, strict=True))
        f = np.sqrt(r2) + 0.12 * _smooth_noise(rng, shape, 12.0)
        closer = f < best
        ids[closer] = i
        best[closer] = f[closer]
    ids[best >= 1.0] = 0
    return ids


def _nucleus(rng: np.random.Generator, canvas: _Canvas, typical: float) -> np.ndarray:
    """A large blobby nucleus deep inside a cell (may extend beyond the crop)."""
    depth = ndi.distance_transform_edt(canvas.label == 0)  # distance to pm / ECS
    radius = typical * rng.uniform(0.3, 0.45)  # nuclei are the largest organelle
    centres = np.flatnonzero(depth >= min(0.6 * radius, float(depth.max())))
    center = np.array(np.unravel_index(centres[rng.integers(centres.size)], depth.shape))
    grid = np.ogrid[tuple(slice(0, s) for s in depth.shape)]
    radii = radius * rng.uniform(0.8, 1.2, 3)
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii, strict=True))
    f = np.sqrt(r2) + 0.08 * _smooth_noise(rng, depth.shape, 8.0)
    return (f < 1.0) & (depth > _NUC_MARGIN)


def _box(
    center: np.ndarray, extent: float, shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], list[np.ndarray]]:
    """Bounding box (clipped to the crop) and broadcastable offsets from the centre."""
    lo = np.maximum(np.floor(center - extent).astype(int), 0)
    hi = np.minimum(np.ceil(center + extent).astype(int) + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    offsets = [g - c for g, c in zip(np.ogrid[box], center, strict=True)]
    return box, offsets


def _mito(rng: np.random.Generator, center: np.ndarray, shape: tuple[int, ...]) -> _Object:
    """Capsule: double membrane modelled as a thicker shell."""
    r, half, u = rng.uniform(3.5, 5.5), rng.uniform(3.0, 12.0), _unit(rng)
    box, (z, y, x) = _box(center, r + half + 2, shape)
    along = np.clip(z * u[0] + y * u[1] + x * u[2], -half, half)
    d = np.sqrt((z - along * u[0]) ** 2 + (y - along * u[1]) ** 2 + (x - along * u[2]) ** 2) - r
    return _Object(box, d, 1.5, MITO_MEM, MITO_LUM)


def _sphere(center: np.ndarray, shape: tuple[int, ...], r: float) -> tuple[tuple, np.ndarray]:
    box, (z, y, x) = _box(center, r + 2, shape)
    return box, np.sqrt(z**2 + y**2 + x**2) - r


def _vesicle(rng: np.random.Generator, center: np.ndarray, shape: tuple[int, ...]) -> _Object:
    box, d = _sphere(center, shape, rng.uniform(2.0, 4.0))
    return _Object(box, d, 1.0, VES_MEM, VES_LUM)


def _endosome(rng: np.random.Generator, center: np.ndarray, shape: tuple[int, ...]) -> _Object:
    box, d = _sphere(center, shape, rng.uniform(4.0, 7.0))
    return _Object(box, d, 1.5, ENDO_MEM, ENDO_LUM)


def _golgi(rng: np.random.Generator, center: np.ndarray, shape: tuple[int, ...]) -> _Object:
    """Stack of 3-5 flat, equally bent cisternae (rounded discs) along a random normal."""
    frame, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    n_cist, radius = int(rng.integers(3, 6)), rng.uniform(8.0, 13.0)
    half, spacing, bend = rng.uniform(1.8, 2.2), 6.0, rng.uniform(0.01, 0.03)
    box, (z, y, x) = _box(center, radius + spacing * n_cist / 2 + bend * radius**2 + 2, shape)
    w, a, b = (z * f[0] + y * f[1] + x * f[2] for f in frame.T)
    rho = np.sqrt(a**2 + b**2)
    w = w - bend * rho**2  # all cisternae curve the same way
    offsets = (np.arange(n_cist) - (n_cist - 1) / 2) * spacing
    shrink = 1 - 0.12 * np.abs(offsets) / spacing  # outer cisternae are smaller
    d = np.min([
        np.sqrt(np.maximum(rho - (radius * s - half), 0) ** 2 + (w - o) ** 2) - half
        for o, s in zip(offsets, shrink, strict=True)
    ], axis=0)
    return _Object(box, d, 1.0, GOLGI_MEM, GOLGI_LUM)


def _place(
    rng: np.random.Generator,
    canvas: _Canvas,
    build: _Builder,
    wanted: int,
    forced: bool,
) -> list[_Object]:
    """Place objects wholly inside free cytoplasm; a forced kind falls back to its best fit."""
    centres = np.flatnonzero(canvas.free)  # stale after painting; the fit test catches that
    wanted = max(wanted, int(forced))
    placed: list[_Object] = []
    best: tuple[float, _Object] | None = None
    if centres.size == 0:
        return placed
    for _ in range(wanted * _TRIES + (_FORCE_TRIES if forced else 0)):
        if len(placed) >= wanted:
            break
        center = np.array(np.unravel_index(centres[rng.integers(centres.size)], canvas.shape))
        obj = build(rng, center + rng.uniform(-0.5, 0.5, 3), canvas.shape)
        fit = float(canvas.free[obj.box][obj.d <= 0].mean())
        if fit == 1.0:
            placed.append(_paint(canvas, obj))
        elif best is None or fit > best[0]:
            best = (fit, obj)
    if forced and not placed and best is not None:
        placed.append(_paint(canvas, best[1]))  # clipped to the free cytoplasm
    return placed


def _paint(canvas: _Canvas, obj: _Object) -> _Object:
    parts = obj.parts()
    write = (parts > 0) & canvas.free[obj.box]
    canvas.label[obj.box][write] = parts[write]
    canvas.free[obj.box] &= obj.d > 1.0  # keep a 1-voxel gap to the next object
    return obj


def _ribosomes(rng: np.random.Generator, canvas: _Canvas, mito: _Object) -> None:
    """A few dark dots (radius ~1 voxel) in the mitochondrial matrix."""
    lumen = canvas.label[mito.box] == MITO_LUM
    idx = np.flatnonzero(lumen)
    if idx.size == 0:
        return
    k = min(1 + int(rng.poisson(idx.size / 250)), idx.size)
    points = np.unravel_index(rng.choice(idx, size=k, replace=False), lumen.shape)
    grid = np.ogrid[tuple(slice(0, s) for s in lumen.shape)]
    d2 = sum((g[None] - p.reshape(-1, 1, 1, 1)) ** 2 for g, p in zip(grid, points, strict=True))
    dots = (d2.min(axis=0) <= 1) & lumen
    canvas.label[mito.box][dots] = MITO_RIBO


def _er(rng: np.random.Generator, canvas: _Canvas, n: int) -> None:
    """Curvy tubes along smooth random paths, painted last into whatever cytoplasm is left."""
    starts = np.flatnonzero(canvas.free)
    if n == 0 or starts.size == 0:
        return
    centreline = np.zeros(canvas.shape, bool)
    radius = np.zeros(canvas.shape, np.float32)
    for _ in range(n):
        steps, r = int(rng.integers(60, 160)), rng.uniform(1.5, 2.5)
        start = np.array(np.unravel_index(starts[rng.integers(starts.size)], canvas.shape))
        heading = ndi.gaussian_filter1d(rng.standard_normal((steps, 3)), sigma=8.0, axis=0)
        heading /= np.linalg.norm(heading, axis=1, keepdims=True)
        path = np.rint(start + 0.5 * (np.cumsum(heading, axis=0) - heading[0])).astype(int)
        path = path[np.all((path >= 0) & (path < canvas.shape), axis=1)]
        centreline[tuple(path.T)] = True
        radius[tuple(path.T)] = r
    dist, nearest = ndi.distance_transform_edt(~centreline, return_indices=True)
    d = dist - radius[tuple(nearest)]
    parts = np.where(d <= 0, np.where(d <= -1.0, ER_LUM, ER_MEM), 0)
    write = (parts > 0) & (canvas.label == 0) & canvas.cells
    canvas.label[write] = parts[write]


# ------------------------------------------------------------------------------------ image


def _render(rng: np.random.Generator, label: np.ndarray, look: Appearance) -> np.ndarray:
    """EM-like intensities: class means + texture, chromatin, PSF blur, dataset contrast, noise."""
    shape = label.shape
    texture = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.2)
    texture /= texture.std() + 1e-6
    image = _BASE[label] + _TEXTURE[label] * texture
    nucleus = label == NUC
    if nucleus.any():
        periphery = nucleus & ~ndi.binary_erosion(nucleus, iterations=3, border_value=1)
        chromatin = nucleus & (_smooth_noise(rng, shape, 5.0) > 0.4 - 1.2 * periphery)
        image[chromatin] -= _CHROMATIN_DROP
        # a double membrane: 2 voxels, so that it survives the PSF blur as a dark line
        envelope = nucleus & ~ndi.binary_erosion(nucleus, iterations=2, border_value=1)
        image[envelope] = _ENVELOPE
    image = ndi.gaussian_filter(image, _PSF_SIGMA)
    image = look.gain * (image - 128.0) + 128.0 + look.offset
    image += look.noise_sd * rng.standard_normal(shape).astype(np.float32)
    return np.rint(np.clip(image, 0, 252)).astype(np.float32)


def _write_nifti(path: Path, array: np.ndarray, spacing_nm: tuple[float, float, float]) -> None:
    """Gzipped NIfTI with zooms = spacing; written as bytes (fixed mtime, no name) atomically."""
    nifti = nib.Nifti1Image(array, np.diag([*map(float, spacing_nm), 1.0]))
    data = gzip.compress(nifti.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
