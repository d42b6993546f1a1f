"""Class frequencies of the training crops, from the inventory's voxel counts, and what is
derived from them: loss weights (`class_weights: inverse | sqrt_inverse | log_inverse`) and crop
sampling weights (`sampling: class_weighted`).

A class's frequency is counted only over the crops that annotate it: in a crop that does not,
its voxels are unknown, not background, so counting them would make partly annotated classes
look rarer than they are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellmapseg.classes import Ontology
from cellmapseg.data.datalist import parse_annotated_classes
from cellmapseg.errors import InputError

# Frequencies below this are raised to it, so a class with (almost) no voxels gets a large
# finite weight rather than an infinite one.
MIN_FREQUENCY = 1e-6
RULES = ("inverse", "sqrt_inverse", "log_inverse")


def annotation_matrix(rows: pd.DataFrame, ontology: Ontology) -> np.ndarray:
    """(crops, classes) bool: which atomic classes each crop annotates."""
    n = ontology.num_channels
    out = np.zeros((len(rows), n), bool)
    for i, (crop, text) in enumerate(zip(rows["crop"], rows["annotated_classes"], strict=True)):
        where = f"inventory: crop {crop} annotated_classes"
        out[i, list(parse_annotated_classes(str(text) if text == text else "", where, n))] = True
    return out


def voxel_counts(rows: pd.DataFrame, ontology: Ontology) -> np.ndarray:
    """(crops, classes) voxel counts from the inventory's vox_{class} columns."""
    columns = [f"vox_{name}" for name in ontology.atomic]
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise InputError(f"inventory: column(s) {', '.join(missing)} missing; rebuild the "
                         "inventory with this config's classes")
    return rows[columns].to_numpy(np.float64)


def class_frequencies(rows: pd.DataFrame, ontology: Ontology) -> np.ndarray:
    """Per atomic class: its voxels / all voxels, over the crops of `rows` that annotate it
    (NaN for a class no crop annotates)."""
    annotated = annotation_matrix(rows, ontology)
    counts = voxel_counts(rows, ontology)
    sizes = rows["voxels"].to_numpy(np.float64)[:, None]
    total = (sizes * annotated).sum(axis=0)
    positive = (counts * annotated).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, positive / total, np.nan)


def class_weights(rule: str, frequencies: np.ndarray) -> list[float]:
    """Loss weight per class by `rule`, normalised to mean 1 over the classes some crop
    annotates; a class no crop annotates gets 1 (it never contributes to the loss).
    log_inverse is ENet's 1 / ln(1.02 + f), which stays within about 50x of the most common
    class where the plain inverse can reach 1e6."""
    if rule not in RULES:
        raise ValueError(f"class weight rule {rule!r}: expected one of {', '.join(RULES)}")
    known = ~np.isnan(frequencies)
    f = np.clip(np.where(known, frequencies, 1.0), MIN_FREQUENCY, 1.0)
    raw = {"inverse": 1.0 / f, "sqrt_inverse": 1.0 / np.sqrt(f),
           "log_inverse": 1.0 / np.log(1.02 + f)}[rule]
    if not known.any():
        return [1.0] * len(frequencies)
    weights = np.where(known, raw / raw[known].mean(), 1.0)
    return [float(w) for w in weights]


def crop_weights(rows: pd.DataFrame, ontology: Ontology) -> np.ndarray:
    """Sampling weight per crop, normalised to sum 1: the inverse square root of the frequency
    of the rarest annotated class present in the crop (a crop with none present gets the
    weight of the most common class), so crops holding rare classes are drawn more often."""
    freq = class_frequencies(rows, ontology)
    present = (voxel_counts(rows, ontology) > 0) & annotation_matrix(rows, ontology)
    per_class = 1.0 / np.sqrt(np.clip(np.nan_to_num(freq, nan=1.0), MIN_FREQUENCY, 1.0))
    floor = per_class[~np.isnan(freq)].min() if (~np.isnan(freq)).any() else 1.0
    weights = np.where(present, per_class[None, :], 0.0).max(axis=1, initial=0.0)
    weights = np.where(weights > 0, weights, floor)
    return weights / weights.sum()
