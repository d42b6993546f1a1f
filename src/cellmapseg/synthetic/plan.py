"""What each synthetic crop is: split, dataset, shape and annotated classes, drawn before any
voxel exists so that every crop can then be made from its own random stream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellmapseg.classes import Ontology
from cellmapseg.config import SyntheticConfig

# Classes annotated together: a membrane is never annotated without its lumen (and vice versa).
# Every class of an ontology outside these pairs is annotated on its own.
PAIRS: tuple[tuple[str, ...], ...] = (
    ("mito_mem", "mito_lum"), ("golgi_mem", "golgi_lum"), ("ves_mem", "ves_lum"),
    ("endo_mem", "endo_lum"), ("er_mem", "er_lum"),
)
_MITO, _RIBO = ("mito_mem", "mito_lum"), "mito_ribo"

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



def plan_crops(cfg: SyntheticConfig, ontology: Ontology) -> list[CropPlan]:
    """Splits, datasets, shapes and annotated classes of every crop (training first)."""
    rng = stream(cfg, TAG_PLAN)
    n = cfg.n_train + cfg.n_val
    large, small, empty = (int(i) for i in rng.choice(cfg.n_train, size=3, replace=False))
    jitter = rng.uniform(-cfg.shape_jitter, cfg.shape_jitter, size=(n, 3))
    shapes = [tuple(int(s) for s in np.maximum(np.rint(np.multiply(cfg.shape, 1 + j)), 8))
              for j in jitter]
    shapes[large], shapes[small] = tuple(cfg.large_shape), tuple(cfg.small_shape)
    plan = _Annotations(ontology)
    annotated = [plan.draw(rng) for _ in range(n)]
    annotated[empty] = set()
    train = [i for i in range(cfg.n_train) if i != empty]
    plan.ensure_coverage(rng, annotated, train)
    plan.ensure_coverage(rng, annotated, list(range(cfg.n_train, n)))
    return [
        CropPlan(i, "training" if i < cfg.n_train else "validation", i % cfg.n_datasets,
                 shapes[i], frozenset(annotated[i]))
        for i in range(n)
    ]


class _Annotations:
    """Which channels a crop annotates, drawn per annotation group (a membrane/lumen pair, or
    one class) with the ontology's per-class frequencies; a class of frequency 0 never is."""

    def __init__(self, ontology: Ontology) -> None:
        self.ontology = ontology
        names = set(ontology.atomic)
        pairs = [p for p in PAIRS if set(p) <= names]
        paired = {n for p in pairs for n in p}
        order = {n: c for c, n in enumerate(ontology.atomic)}
        groups = [*pairs, *((n,) for n in ontology.atomic if n not in paired)]
        self.groups = sorted(groups, key=lambda g: order[g[0]])  # channel order
        self.mito = set(_MITO) <= names and _RIBO in names

    def channels(self, group: tuple[str, ...]) -> set[int]:
        return {self.ontology.channel(name) for name in group}

    def frequency(self, name: str) -> float:
        return self.ontology.frequency[self.ontology.channel(name)]

    def draw(self, rng: np.random.Generator) -> set[int]:
        """Per-group draws following the per-class frequencies; never empty."""
        chosen: set[int] = set()
        draws = rng.random(len(self.groups))
        for group, u in zip(self.groups, draws, strict=True):
            if self.mito and group == (_RIBO,):  # annotated only within annotated mito
                p = self.frequency(_RIBO) / max(self.frequency("mito_lum"), 1e-9)
                p = p if self.channels(_MITO) <= chosen else 0.0
            else:
                p = max(self.frequency(name) for name in group)
            if u < p:
                chosen |= self.channels(group)
        if not chosen:
            drawable = [c for c in range(self.ontology.num_channels)
                        if self.ontology.frequency[c] > 0]
            if drawable:
                chosen = self.closure(drawable[int(rng.integers(len(drawable)))])
        return chosen

    def closure(self, channel: int) -> set[int]:
        """The channel's whole group, plus mito for mito_ribo."""
        name = self.ontology.atomic[channel]
        group = next(g for g in self.groups if name in g)
        extra = self.channels(_MITO) if self.mito and name == _RIBO else set()
        return self.channels(group) | extra

    def ensure_coverage(self, rng: np.random.Generator, annotated: list[set[int]],
                        split: list[int]) -> None:
        """Rare classes (golgi: 7%) would otherwise be missing from a tiny split entirely."""
        for channel in range(self.ontology.num_channels):
            if self.ontology.frequency[channel] == 0:
                continue
            lacking = [i for i in split if channel not in annotated[i]]
            if len(lacking) == len(split):
                annotated[lacking[int(rng.integers(len(lacking)))]] |= self.closure(channel)


def mask_unannotated(label: np.ndarray, annotated: frozenset[int],
                     ontology: Ontology) -> np.ndarray:
    """Zero the voxels of classes the crop does not annotate (as in the real label files);
    `label` holds the ontology's label values."""
    keep = np.zeros(ontology.max_label + 1, bool)
    keep[[ontology.labels[c] for c in annotated]] = True
    return np.where(keep[label], label, 0).astype(np.uint8)

