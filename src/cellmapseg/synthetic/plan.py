"""What each synthetic crop is: split, dataset, shape and annotated classes, drawn before any
voxel exists so that every crop can then be made from its own random stream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellmapseg.classes import CLASS_NAMES, NUM_CLASSES, annotation_frequency
from cellmapseg.config import SyntheticConfig

# Classes annotated together: a membrane is never annotated without its lumen (and vice versa).
GROUPS: tuple[tuple[str, ...], ...] = (
    ("ecs",), ("pm",), ("mito_mem", "mito_lum"), ("mito_ribo",), ("golgi_mem", "golgi_lum"),
    ("ves_mem", "ves_lum"), ("endo_mem", "endo_lum"), ("er_mem", "er_lum"), ("nuc",),
)
_MITO = frozenset({CLASS_NAMES.index("mito_mem"), CLASS_NAMES.index("mito_lum")})
_RIBO = CLASS_NAMES.index("mito_ribo")

# Independent random streams: SeedSequence([seed, tag, index]).
TAG_PLAN, TAG_CROP, TAG_LOOK = 0, 1, 2


def stream(cfg: SyntheticConfig, tag: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([cfg.seed % (1 << 64), tag, index])


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



def plan_crops(cfg: SyntheticConfig) -> list[CropPlan]:
    """Splits, datasets, shapes and annotated classes of every crop (training first)."""
    rng = stream(cfg, TAG_PLAN)
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

