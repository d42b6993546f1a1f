"""The embedded synthetic dataset in the challenge's Zarr layout (synthetic.zarr_layout), with its
train and test crop manifests: what the Zarr route reads.

Each of cfg.n_datasets datasets (jrc_synth-1, ...) is one EM volume painted and rendered like the
NIfTI generator's crops, holding the planned crops (plan_crops: the same splits, shapes and
annotated classes, crop number = plan index + 1) and one test crop:

  EM        uint8, s0 at spacing / 2 (4 nm), s1 = 2 x s0 = spacing (the training level); its
            first voxel edge lies a few hundred nm from the world origin (a multiple of spacing).
  label     each planned crop cut from the dataset's label at 4 nm, shape = the plan's shape at
  crops     the training level (so twice as many voxels per axis): one 0/1 array per annotated
            class (ids, connected components, for the ontology's instance classes) and 1-3
            classes held but not annotated, written all unknown; the crop that annotates
            nothing holds unknown classes only (and so has no row in the train manifest).
  test      one per dataset, about cfg.shape at the training level, scored on every class of
  crops     the ontology; one of them at spacing / 4 (2 nm). EM only.

Placement: the crops of a dataset (test crop included) are packed without overlap, at least one
training voxel apart, with CONTEXT training voxels of EM around the pack, so that every crop
has that much EM context on every side. Crops sit on the 4 nm grid; each is shifted by 0 or 1
fine voxel per axis at random, the first crop of each dataset off the 8 nm grid on at least one
axis (a crop's training voxels at its faces are then covered in part); the 2 nm crop is shifted
by 0-3 voxels of 2 nm, off the 4 nm grid on at least one axis.

Painting and rendering: geometry's painter draws in voxels of the NIfTI generator's spacing, so
each dataset's label is painted at the training spacing (objects the same size in nm as in the
NIfTI crops) and repeated 2 x 2 x 2 onto the 4 nm grid; the EM is rendered at 4 nm from that
label with the dataset's appearance, its noise scaled by sqrt(8) so that the training level (s1,
the mean of 8 s0 voxels) is as noisy as the NIfTI images. One painting per dataset, with the
volume's mean edge as the typical size (its 1-3 cells are sized to the volume in a step or two
and nuclei scale with it), forcing every class its crops annotate into the volume, though not
into each crop as the NIfTI generator does: of the 8 mirror images of the layout, the one whose
crops show the most of their annotated classes (each weighted by 1 / the crops of its split
annotating it) is kept. Rendering goes in slabs along the longest axis (bounded memory, every
thread busy), each from its own random stream with HALO voxels beyond its faces, so that the
blur and the nuclear envelope are exact there: across a face only the random texture and
chromatin pattern change. Slabs depend on the volume's shape only, not on the thread count.

Every random draw comes from SeedSequence([seed, tag, ...]) streams (tags 16-18, beside plan's
0-2): same seed, same bytes. Written under a temporary folder beside `root`, swapped in at the
end; the manifests (removed first) are written last, so a killed run never leaves a dataset
with manifests that is not complete.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from cellmapseg.classes import Ontology
from cellmapseg.config import SyntheticConfig
from cellmapseg.synthetic.geometry import KINDS, paint_label
from cellmapseg.synthetic.plan import CropPlan, plan_crops
from cellmapseg.synthetic.render import Appearance, appearances, render
from cellmapseg.synthetic.zarr_layout import (
    LabelCrop,
    UnlabelledCrop,
    ZarrDataset,
    write_dataset,
    write_manifests,
)

TAG_LAYOUT, TAG_PAINT, TAG_RENDER = 16, 17, 18  # plan.py's streams use 0-2
CONTEXT = 16  # training voxels of EM around every crop
GAP = 1  # training voxels between two crops' footprints
HALO = 6  # fine voxels rendered beyond a slab face (PSF + nuclear envelope reach)
SLAB_VOXELS = 12_000_000  # fine voxels per rendered slab (~30 bytes each while rendering)
CHUNKS = 64
MAX_WORKERS = 4
_RANK_PAINT, _RANK_WRITE, _RANK_RENDER = 0, 1, 2
_PACK_BEAM = 16
_PACK_ORDERS = 8
_MAX_ID = 254  # instance ids are uint8; 255 is the unknown value


@dataclass(frozen=True)
class _Site:
    """One crop's place in its dataset: `corner` (training voxels, EM s1 index) of its
    footprint box and its shift within it in voxels of its own grid (`sub` per training voxel:
    2 for 4 nm, 4 for 2 nm)."""

    crop: int
    shape: tuple[int, int, int]  # at the training level
    corner: tuple[int, int, int]
    shift: tuple[int, int, int]
    sub: int
    plan: CropPlan | None  # None for the test crop


def generate_zarr(cfg: SyntheticConfig, spacing_nm: tuple[float, float, float], root: Path,
                  train_manifest: Path, test_manifest: Path, ontology: Ontology,
                  workers: int | None = None) -> dict:
    """Write the datasets under `root` (replacing it) and both manifests; return
    {"datasets", "train_crops", "validation_crops", "test_crops"} (names, crop numbers)."""
    root = Path(root).resolve()
    spacing = np.asarray(spacing_nm, float)
    plans = plan_crops(cfg, ontology)
    looks = appearances(cfg)
    sites = _layout(cfg, plans)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    n_threads = workers or min(MAX_WORKERS, usable)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        skeletons = _run(n_threads, cfg, spacing, looks, sites, ontology, tmp)
        for path in (train_manifest, test_manifest):
            Path(path).unlink(missing_ok=True)
        _swap(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_manifests(train_manifest, test_manifest, skeletons)
    return {
        "datasets": [ds.name for ds in skeletons],
        "train_crops": [p.index + 1 for p in plans if p.split == "training"],
        "validation_crops": [p.index + 1 for p in plans if p.split == "validation"],
        "test_crops": [t.crop for ds in skeletons for t in ds.test_crops],
    }


def _run(n_threads: int, cfg: SyntheticConfig, spacing: np.ndarray,
         looks: Sequence[Appearance], sites: Sequence[tuple[tuple[int, ...], list[_Site]]],
         ontology: Ontology, tmp: Path) -> list[ZarrDataset]:
    """Paint each dataset, render it in slabs, write it: tasks on `n_threads` threads, at most
    one per thread at a time, the next one taken by rank: paintings first (they unlock the
    rest), then writes (they free memory), then slabs, larger datasets first. Returns the
    datasets without their voxels, in dataset order."""
    queue: list[tuple[int, int, int, Callable[..., Any], tuple, Callable[[Any], None]]] = []
    order = itertools.count()
    size_rank = {d: r for r, d in enumerate(
        sorted(range(cfg.n_datasets), key=lambda d: (-math.prod(sites[d][0]), d)))}
    slabs: dict[int, list[tuple[tuple[int, int], np.ndarray | None]]] = {}
    skeletons: dict[int, ZarrDataset] = {}
    placed = list(sites)
    weights = _weights([s.plan for _, own in sites for s in own if s.plan is not None])

    def push(rank: int, d: int, fn: Callable[..., Any], args: tuple,
             then: Callable[[Any], None]) -> None:
        heapq.heappush(queue, (rank, size_rank[d], next(order), fn, args, then))

    def painted(d: int, result: tuple[np.ndarray, list[_Site]]) -> None:
        label, placed[d] = result[0], (sites[d][0], result[1])
        look = dataclasses.replace(looks[d], noise_sd=looks[d].noise_sd * math.sqrt(8))
        spans = _slab_spans(label.shape)
        slabs[d] = [(span, None) for span in spans]
        for j, span in enumerate(spans):
            push(_RANK_RENDER, d, _render_slab, (cfg, d, j, label, span, look),
                 functools.partial(rendered, d, j, label))

    def rendered(d: int, j: int, label: np.ndarray, image: np.ndarray) -> None:
        slabs[d][j] = (slabs[d][j][0], image)
        if all(image is not None for _, image in slabs[d]):
            push(_RANK_WRITE, d, _write, (cfg, d, spacing, label, slabs.pop(d), placed[d],
                                          ontology, tmp),
                 functools.partial(skeletons.__setitem__, d))

    for d in range(cfg.n_datasets):
        push(_RANK_PAINT, d, _paint, (cfg, d, *sites[d], ontology, weights),
             functools.partial(painted, d))
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        running: dict[Future, Callable[[Any], None]] = {}
        try:
            while queue or running:
                while queue and len(running) < n_threads:
                    *_, fn, args, then = heapq.heappop(queue)
                    running[pool.submit(fn, *args)] = then
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    running.pop(future)(future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [skeletons[d] for d in range(cfg.n_datasets)]


def _write(cfg: SyntheticConfig, d: int, spacing: np.ndarray, label: np.ndarray,
           slabs: Sequence[tuple[tuple[int, int], np.ndarray]],
           layout: tuple[tuple[int, ...], list[_Site]], ontology: Ontology,
           tmp: Path) -> ZarrDataset:
    ds = _dataset(cfg, d, spacing, _assemble(label.shape, slabs), label, layout, ontology)
    write_dataset(tmp, ds, chunks=CHUNKS)
    return _skeleton(ds)


def _swap(tmp: Path, root: Path) -> None:
    """Put the finished tree `tmp` at `root`, replacing what is there."""
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
        os.replace(root, old / root.name)
    os.replace(tmp, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------- layout
def _stream(cfg: SyntheticConfig, *key: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed % (1 << 64), *key])


def _layout(cfg: SyntheticConfig, plans: Sequence[CropPlan]) -> list[tuple[tuple[int, ...],
                                                                           list[_Site]]]:
    """Per dataset: the EM shape at the training level and the sites of its crops (label crops
    in plan order, then the test crop)."""
    rng = _stream(cfg, TAG_LAYOUT)
    test_numbers = [len(plans) + 1 + d for d in range(cfg.n_datasets)]
    fine_test = int(rng.integers(cfg.n_datasets))  # the one test crop at spacing / 4
    out = []
    for d in range(cfg.n_datasets):
        own = [p for p in plans if p.dataset == d]
        jitter = rng.uniform(-cfg.shape_jitter, cfg.shape_jitter, 3)
        test_shape = tuple(int(s) for s in np.maximum(np.rint(np.multiply(cfg.shape,
                                                                          1 + jitter)), 8))
        shapes = [p.shape for p in own] + [test_shape]
        corners, extent = _pack([tuple(s + 1 + GAP for s in shape) for shape in shapes], rng)
        sites = []
        for k, (shape, corner) in enumerate(zip(shapes, corners, strict=True)):
            test = k == len(own)
            sub = 4 if test and d == fine_test else 2
            shift = rng.integers(0, sub, 3)
            if k == 0 or sub == 4:  # off the coarser grid on at least one axis
                axis = int(rng.integers(3))
                shift[axis] = 1 if sub == 2 else int(rng.choice([1, 3]))
            sites.append(_Site(test_numbers[d] if test else own[k].index + 1,
                               tuple(int(s) for s in shape),
                               tuple(int(c) + CONTEXT for c in corner),
                               tuple(int(s) for s in shift), sub, None if test else own[k]))
        out.append((tuple(int(e) + 2 * CONTEXT for e in extent), sites))
    return out


def _volume(extent: Sequence[int]) -> int:
    return math.prod(e + 2 * CONTEXT for e in extent)


def _pack(sizes: Sequence[tuple[int, ...]], rng: np.random.Generator
          ) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """Corners of non-overlapping boxes of `sizes` and the extent holding them: the smallest
    volume (margins included) of a beam search over placements at extreme points, for the
    boxes largest first and in a few random orders."""
    n = len(sizes)
    orders = [sorted(range(n), key=lambda i: (-math.prod(sizes[i]), i)),
              *(list(rng.permutation(n)) for _ in range(_PACK_ORDERS - 1))]
    placed, extent = min((_beam(order, sizes) for order in orders),
                         key=lambda r: _volume(r[1]))
    return [placed[i] for i in range(n)], extent


def _beam(order: Sequence[int], sizes: Sequence[tuple[int, ...]]
          ) -> tuple[dict[int, tuple[int, ...]], tuple[int, ...]]:
    """Boxes placed in `order`, each at an extreme point (a corner of those before it) of one
    of the _PACK_BEAM smallest partial packings: (corners by box, extent)."""
    # a partial packing: (corners by box, extreme points, extent)
    states: list[tuple[dict[int, tuple[int, ...]], tuple[tuple[int, ...], ...],
                       tuple[int, ...]]] = [({}, ((0, 0, 0),), (0, 0, 0))]
    for i in order:
        s = sizes[i]
        grown = []
        for placed, points, hi in states:
            for p in points:
                if any(all(p[a] < q[a] + sizes[j][a] and q[a] < p[a] + s[a] for a in range(3))
                       for j, q in placed.items()):
                    continue
                h = tuple(max(hi[a], p[a] + s[a]) for a in range(3))
                more = tuple(tuple(p[a] + (s[a] if a == b else 0) for a in range(3))
                             for b in range(3))
                grown.append(((_volume(h), sum(p), p), {**placed, i: p},
                              tuple(x for x in points if x != p) + more, h))
        grown.sort(key=lambda g: g[0])
        states, seen = [], set()
        for _, placed, points, h in grown:
            key = tuple(sorted(placed.items()))
            if key not in seen and len(states) < _PACK_BEAM:
                seen.add(key)
                states.append((placed, points, h))
    placed, _, extent = states[0]
    return placed, extent


# ------------------------------------------------------------------------------- painting
def _paint(cfg: SyntheticConfig, d: int, shape: tuple[int, ...], sites: Sequence[_Site],
           ontology: Ontology, weights: dict[tuple[str, int], float]
           ) -> tuple[np.ndarray, list[_Site]]:
    """The dataset's label (painter's internal values) at the training spacing, every class
    one of its crops annotates placed at least once, and its sites, mirrored so that the crops
    show the classes they annotate as well as the 8 mirror images of the layout allow."""
    annotated: set[int] = set().union(*(s.plan.annotated for s in sites if s.plan))
    names = {ontology.atomic[c] for c in annotated}
    others = [c for c, n in enumerate(ontology.atomic) if n not in KINDS]
    extras = [(len(KINDS) + 1 + k, c in annotated) for k, c in enumerate(others)]
    label = paint_label(_stream(cfg, TAG_PAINT, d), shape, float(np.mean(shape)), names, extras)
    values = internal_values(ontology)

    def shown(layout: list[_Site]) -> float:
        """The annotations a layout's crops show, each weighted by its rarity."""
        score = 0.0
        for site in layout:
            if site.plan is not None:
                lo = np.asarray(site.corner)
                box = label[tuple(slice(a, a + n + 1) for a, n in zip(lo, site.shape,
                                                                      strict=True))]
                held = set(np.unique(box).tolist())
                score += sum(weights[site.plan.split, c] for c in site.plan.annotated
                             if values[c] in held)
        return score

    layouts = [[_mirror(site, shape, flip) for site in sites]
               for flip in itertools.product((False, True), repeat=3)]
    return label, max(layouts, key=shown)  # the first best: the layout itself on a tie


def _weights(plans: Sequence[CropPlan]) -> dict[tuple[str, int], float]:
    """1 / the number of crops of a split annotating a class, per (split, channel)."""
    counts: dict[tuple[str, int], int] = {}
    for p in plans:
        for c in p.annotated:
            counts[p.split, c] = counts.get((p.split, c), 0) + 1
    return {key: 1 / n for key, n in counts.items()}


def _mirror(site: _Site, shape8: Sequence[int], flip: Sequence[bool]) -> _Site:
    """`site` in the volume mirrored along the axes of `flip` (its grid offsets mirrored too:
    a crop off the coarser grid stays off it; the context margins are symmetric)."""
    corner, shift = list(site.corner), list(site.shift)
    for a in range(3):
        if flip[a]:
            start = shape8[a] * site.sub - (site.corner[a] * site.sub + site.shift[a]) \
                - site.shape[a] * site.sub
            corner[a], shift[a] = divmod(start, site.sub)
    return dataclasses.replace(site, corner=tuple(corner), shift=tuple(shift))


def internal_values(ontology: Ontology) -> list[int]:
    """The painter's internal value of each atomic class (as synthetic.generate maps them)."""
    others = [c for c, n in enumerate(ontology.atomic) if n not in KINDS]
    return [KINDS.index(n) + 1 if n in KINDS else len(KINDS) + 1 + others.index(c)
            for c, n in enumerate(ontology.atomic)]


def _fine(label: np.ndarray, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Voxels lo:hi of `label` repeated 2 x 2 x 2 (its 4 nm version), cut from label only."""
    c_lo = [a // 2 for a in lo]
    c_hi = [-(-b // 2) for b in hi]
    part = label[tuple(slice(a, b) for a, b in zip(c_lo, c_hi, strict=True))]
    z, y, x = part.shape
    fine = np.broadcast_to(part[:, None, :, None, :, None], (z, 2, y, 2, x, 2))
    fine = fine.reshape(2 * z, 2 * y, 2 * x)
    return fine[tuple(slice(a - 2 * c, b - 2 * c) for a, b, c in zip(lo, hi, c_lo, strict=True))]


# ------------------------------------------------------------------------------ rendering
def _slab_spans(shape8: Sequence[int]) -> list[tuple[int, int]]:
    """Slabs (fine voxels along the longest axis) of the 4 nm volume."""
    fine = [2 * n for n in shape8]
    axis_len = max(fine)
    k = max(1, min(math.ceil(math.prod(fine) / SLAB_VOXELS), axis_len // (4 * HALO)))
    bounds = [round(j * axis_len / k) for j in range(k + 1)]
    return list(itertools.pairwise(bounds))


def _render_slab(cfg: SyntheticConfig, d: int, j: int, label: np.ndarray, span: tuple[int, int],
                 look: Appearance) -> np.ndarray:
    """EM (uint8) of the fine voxels `span` along the longest axis, rendered with HALO more
    voxels on each side (clipped to the volume)."""
    fine_shape = [2 * n for n in label.shape]
    axis = int(np.argmax(fine_shape))
    win_lo, win_hi = max(span[0] - HALO, 0), min(span[1] + HALO, fine_shape[axis])
    lo, hi = [0, 0, 0], list(fine_shape)
    lo[axis], hi[axis] = win_lo, win_hi
    image = render(_stream(cfg, TAG_RENDER, d, j), _fine(label, lo, hi), look)
    keep = [slice(None)] * 3
    keep[axis] = slice(span[0] - win_lo, span[1] - win_lo)
    return image[tuple(keep)].astype(np.uint8)  # render's values are whole numbers 0-252


def _assemble(shape8: Sequence[int], slabs: Sequence[tuple[tuple[int, int], np.ndarray]]
              ) -> np.ndarray:
    """The 4 nm EM from its slabs."""
    fine_shape = [2 * n for n in shape8]
    axis = int(np.argmax(fine_shape))
    em = np.empty(fine_shape, np.uint8)
    for (a, b), image in slabs:
        em[(slice(None),) * axis + (slice(a, b),)] = image
    return em


# ------------------------------------------------------------------------------- datasets
def _dataset(cfg: SyntheticConfig, d: int, spacing: np.ndarray, em: np.ndarray,
             label: np.ndarray, layout: tuple[tuple[int, ...], list[_Site]],
             ontology: Ontology) -> ZarrDataset:
    """Dataset d: its EM (s0 at spacing / 2), its label crops and its test crop."""
    rng = _stream(cfg, TAG_LAYOUT, 1, d)
    if d == 0:
        em = _black_border(em, layout[1])
    em_vs = spacing / 2
    em_edge = spacing * rng.integers(20, 61, 3)  # first s0 voxel's outer edge, world nm
    values = internal_values(ontology)
    crops, tests = [], []
    for site in layout[1]:
        vs = spacing / site.sub
        start = np.asarray(site.corner) * site.sub + np.asarray(site.shift)  # own voxels
        translation = _triple(em_edge + start * vs + vs / 2)
        shape = tuple(n * site.sub for n in site.shape)
        if site.plan is None:
            tests.append(UnlabelledCrop(site.crop, _triple(vs), translation, shape,
                                        tuple(ontology.names)))
            continue
        fine = _fine(label, start, start + np.asarray(shape))
        arrays = {ontology.atomic[c]: _class_array(fine == values[c],
                                                   ontology.is_instance(ontology.atomic[c]))
                  for c in sorted(site.plan.annotated)}
        held = [n for c, n in enumerate(ontology.atomic) if c not in site.plan.annotated]
        n_unknown = min(len(held), int(rng.integers(1, 4)))
        unknown = tuple(sorted((str(n) for n in rng.choice(held, n_unknown, replace=False)),
                               key=ontology.channel)) if held else ()
        crops.append(LabelCrop(site.crop, _triple(vs), translation, arrays, unknown,
                               grid_shape=shape))
    return ZarrDataset(f"jrc_synth-{d + 1}", em, _triple(em_vs), _triple(em_edge + em_vs / 2),
                       tuple(crops), tuple(tests), frozenset(ontology.instance))


# Training voxels of black EM that reach into the first dataset's label crops nearest its
# x = 0 face (with the default layout: training crops 1, 4, 7, 10 and validation crop 13).
PADDED_PLANES = 3


def _black_border(em: np.ndarray, sites: Sequence[_Site]) -> np.ndarray:
    """The EM black (0) from its first plane along x to PADDED_PLANES planes into the label
    crops that start nearest that face: the black border of a converted crop whose box left the
    imaged volume, which data.padding_mask keeps out of the loss and the scores. The labels
    there are unchanged."""
    low = min(s.corner[2] for s in sites if s.plan is not None)
    out = em.copy()
    out[:, :, : 2 * (low + PADDED_PLANES)] = 0  # s0 is twice as fine as the training level
    return out


def _class_array(mask: np.ndarray, instance: bool) -> np.ndarray:
    """0/1, or connected-component ids 1-254 (reused past 254) for an instance class."""
    if not instance:
        return mask.astype(np.uint8)
    ids, _ = ndi.label(mask)
    return np.where(ids > 0, (ids - 1) % _MAX_ID + 1, 0).astype(np.uint8)


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _skeleton(ds: ZarrDataset) -> ZarrDataset:
    """`ds` without its voxels (what the manifests need: names, grids, classes)."""
    crops = tuple(dataclasses.replace(c, labels={n: np.broadcast_to(np.uint8(0), c.shape)
                                                 for n in c.labels}) for c in ds.crops)
    return dataclasses.replace(ds, em=np.zeros((1, 1, 1), np.uint8), crops=crops)
