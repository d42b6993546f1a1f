"""The label of a synthetic crop: cells in extracellular space, a plasma membrane shell, a
nucleus, and organelles with membrane/lumen pairs placed in the free cytoplasm.

The painter knows the spec's 14 classes (KINDS) and paints them with the internal values 1-14;
any other class of an ontology is painted as small round bodies in the cytoplasm left over,
with the internal values 15 and up (`extras`). synthetic.generate maps internal values to the
ontology's label values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

# The classes the painter draws as biology, in the order of their internal values 1-14.
KINDS: tuple[str, ...] = (
    "ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "golgi_mem", "golgi_lum",
    "ves_mem", "ves_lum", "endo_mem", "endo_lum", "er_mem", "er_lum", "nuc",
)
(ECS, PM, MITO_MEM, MITO_LUM, MITO_RIBO, GOLGI_MEM, GOLGI_LUM, VES_MEM, VES_LUM, ENDO_MEM,
 ENDO_LUM, ER_MEM, ER_LUM, NUC) = range(1, len(KINDS) + 1)
_EXTRA_DENSITY = 2.0  # round bodies per other class per 64^3 voxels

_REF_VOXELS = 64**3  # organelle densities below are per 64^3 voxels
_DENSITY = {"golgi": 0.4, "mito": 10.0, "endo": 4.0, "ves": 30.0, "er": 10.0}
_TRIES = 6  # placement attempts per wanted object
_FORCE_TRIES = 60  # extra attempts for a kind the crop's annotations require
_PM_THICK = 2
_NUC_MARGIN = 3.0  # voxels of cytoplasm kept between the nucleus and the plasma membrane


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


def paint_label(rng: np.random.Generator, shape: tuple[int, ...], typical: float,
                names: set[str], extras: Sequence[tuple[int, bool]] = ()) -> np.ndarray:
    """Full label (uint8 internal values) of one crop; a kind among `names` is always placed.
    `extras`: (internal value, forced) of each class beyond KINDS, painted last (a forced one
    at least once)."""
    canvas = _cell_canvas(rng, shape, typical)
    if "nuc" in names or rng.random() < 0.5:
        nucleus = _nucleus(rng, canvas, typical)
        canvas.label[nucleus] = NUC
    canvas.free = ndi.binary_erosion((canvas.label == 0) & canvas.cells, border_value=1)
    scale = float(np.prod(shape)) / _REF_VOXELS
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
    for value, forced in extras:
        _bodies(rng, canvas, value, max(int(rng.poisson(_EXTRA_DENSITY * scale)), int(forced)))
    return canvas.label


def _bodies(rng: np.random.Generator, canvas: _Canvas, value: int, n: int) -> None:
    """`n` round bodies of one extra class in the cytoplasm nothing else holds yet."""
    for _ in range(n):
        free = np.flatnonzero((canvas.label == 0) & canvas.cells)
        if free.size == 0:
            return
        center = np.array(np.unravel_index(free[rng.integers(free.size)], canvas.shape))
        box, d = _sphere(center + rng.uniform(-0.5, 0.5, 3), canvas.shape, rng.uniform(2.0, 4.0))
        write = (d <= 0) & (canvas.label[box] == 0) & canvas.cells[box]
        canvas.label[box][write] = value


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], corr: float) -> np.ndarray:
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
        f = np.sqrt(r2) + 0.12 * smooth_noise(rng, shape, 12.0)
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
    f = np.sqrt(r2) + 0.08 * smooth_noise(rng, depth.shape, 8.0)
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

