"""Bootstrap confidence intervals over validation crops for every score of the comparison.

Why crops: the crop is the unit the scores are pooled over (aggregate.py sums tp/fp/fn and the
Hausdorff sums of a class over its crops), so resampling crops with replacement is what
"another set of validation crops like these" would have given. A resample is a row of
multiplicities (how often each crop was drawn); each class's pooled counts in that resample are
the multiplicity-weighted sum of its per-crop counts, i.e. exactly what `aggregate.summarise`
would pool from eval.csv with each crop's rows repeated that many times. Everything runs as
numpy over all resamples at once: (resamples, n_crops) @ (n_crops, classes) per count.

Column names are those of report/comparison.py (HEADLINE, LEADERBOARD_SCORES, `iou_{c}`,
`dice_{c}`, `{c}_f1`, `{c}_norm_hausdorff`, `{c}_combined`); they are spelled out here because
evaluate sits below report and may not import it.

Two entries compared with the SAME counts (same seed, same crops) give paired resamples:
`paired_difference` reads the interval of their difference, which is much narrower than two
separate intervals suggest when both entries find the same crops hard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cellmapseg.classes import Ontology

HEADLINE = ("overall", "semantic_mean_iou", "instance_mean_combined")
# comparison.py's leaderboard column -> the key of summary["leaderboard"] it reads.
LEADERBOARD_SCORES = {"leaderboard_overall": "overall",
                      "leaderboard_semantic_mean_iou": "semantic_mean_iou",
                      "leaderboard_instance_mean_combined": "instance_mean_combined"}
# Pooled inputs per (crop, class): the count columns of eval.csv, and the number of rows.
_FIELDS = ("tp", "fp", "fn", "hausdorff_norm_sum", "n_hausdorff")


def resample_counts(n_crops: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_crops) int multiplicities: each row draws n_crops crops with replacement
    (numpy default_rng(seed)). Scoring two entries with the same array pairs their resamples."""
    if n_crops < 1 or resamples < 1:
        raise ValueError(f"need at least one crop and one resample, got {n_crops}, {resamples}")
    draws = np.random.default_rng(seed).integers(0, n_crops, size=(resamples, n_crops))
    counts = np.zeros((resamples, n_crops), np.int64)
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1)
    return counts


def _per_crop(table: pd.DataFrame, crops: Sequence[str], names: list[str]
              ) -> tuple[np.ndarray, np.ndarray]:
    """(n_crops, classes, fields) sums of the count columns and (n_crops, classes) row counts of
    the rows of `names` (rows of other classes are ignored, as pool_classes ignores them)."""
    index = {c: i for i, c in enumerate(crops)}
    if len(index) != len(crops):
        raise ValueError("crops: a crop is listed twice")
    unknown = [c for c in pd.unique(table["crop"]) if c not in index]
    if unknown:
        raise ValueError(f"table: rows of crop {unknown[0]!r}, which is not among the crops")
    cls = {n: k for k, n in enumerate(names)}
    mine = table[table["class"].isin(list(cls))]
    ci = mine["crop"].map(index).to_numpy(np.int64)
    ki = mine["class"].map(cls).to_numpy(np.int64)
    values = np.column_stack([pd.to_numeric(mine[f], errors="coerce").astype(float)
                              .fillna(0.0).to_numpy(np.float64) for f in _FIELDS])
    sums = np.zeros((len(crops), len(names), len(_FIELDS)))
    rows = np.zeros((len(crops), len(names)))
    np.add.at(sums, (ci, ki), values)
    np.add.at(rows, (ci, ki), 1.0)
    return sums, rows


def _kinds(table: pd.DataFrame, names: list[str]) -> list[str]:
    """Each class's kind as pool_classes reads it (its first row); one class, one kind."""
    kinds = table.groupby("class", sort=False)["kind"].agg(["first", "nunique"])
    mixed = [n for n in names if kinds.at[n, "nunique"] > 1]
    if mixed:
        raise ValueError(f"table: class {mixed[0]!r} has rows of more than one kind")
    return [kinds.at[n, "first"] for n in names]


def _mean(values: list[tuple[np.ndarray | float, np.ndarray | None]], shape: tuple[int, ...]
          ) -> np.ndarray:
    """aggregate._mean per resample: the values present, added one class at a time in order
    (the same additions as Python's sum), over their number; 0 when none is present."""
    total = np.zeros(shape)
    n = np.zeros(shape)
    for value, present in values:
        if present is None:
            total = total + value
            n = n + 1
        else:
            total = total + np.where(present, value, 0.0)
            n = n + present
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), 0.0)


def column_scores(table: pd.DataFrame, crops: Sequence[str], ontology: Ontology,
                  counts: np.ndarray) -> dict[str, np.ndarray]:
    """For every score column (only the classes that have rows in `table`), its value in each
    resample: shape (resamples,). Pooled counts are the multiplicity-weighted sums over crops (a
    crop drawn twice counts twice); a class none of whose crops is drawn is absent from that
    resample (NaN in its own columns, left out of the means as summarise leaves out a class
    with no rows); the leaderboard columns follow aggregate.leaderboard (tested classes not
    predicted score 0, predicted ones without rows left out)."""
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(crops):
        raise ValueError(f"counts: expected shape (resamples, {len(crops)}), got {counts.shape}")
    if (counts < 0).any():
        raise ValueError("counts: multiplicities must be >= 0")
    present_names = set(table["class"])
    names = [n for n in ontology.names if n in present_names]
    sums, rows = _per_crop(table, crops, names)
    kinds = _kinds(table, names)
    weights = counts.astype(np.float64)
    n_b = weights.shape[0]
    # Integer counts stay exact in float64 (< 2**53), so tp/fp/fn pool exactly as in summarise.
    pooled = (weights @ sums.reshape(len(crops), -1)).reshape(n_b, len(names), len(_FIELDS))
    present = (weights @ rows) > 0
    tp, fp, fn, norm_sum, n_dist = (pooled[..., f] for f in range(len(_FIELDS)))

    out: dict[str, np.ndarray] = {}
    score: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # class -> (leaderboard score, present)
    semantic, instance = [], []
    with np.errstate(invalid="ignore", divide="ignore"):
        for k, (name, kind) in enumerate(zip(names, kinds, strict=True)):
            here = present[:, k]
            denom = tp[:, k] + fp[:, k] + fn[:, k]
            if kind == "instance":
                denom2 = 2 * tp[:, k] + fp[:, k] + fn[:, k]
                empty = (denom2 == 0) & (n_dist[:, k] == 0)
                f1 = np.where(denom2 > 0, 2 * tp[:, k] / denom2, 0.0)
                mean = np.where(n_dist[:, k] > 0, norm_sum[:, k] / n_dist[:, k], 0.0)
                combined = np.sqrt(f1 * mean)
                f1, mean, combined = (np.where(empty, 1.0, v) for v in (f1, mean, combined))
                for col, v in ((f"{name}_f1", f1), (f"{name}_norm_hausdorff", mean),
                               (f"{name}_combined", combined)):
                    out[col] = np.where(here, v, np.nan)
                instance.append((combined, here))
                score[name] = (combined, here)
            else:
                value = np.where(denom == 0, 1.0, tp[:, k] / denom)
                denom2 = 2 * tp[:, k] + fp[:, k] + fn[:, k]
                out[f"iou_{name}"] = np.where(here, value, np.nan)
                out[f"dice_{name}"] = np.where(here, np.where(denom2 == 0, 1.0,
                                                              2 * tp[:, k] / denom2), np.nan)
                semantic.append((value, here))
                score[name] = (value, here)

    sem, inst = _mean(semantic, (n_b,)), _mean(instance, (n_b,))
    headline = {"semantic_mean_iou": sem, "instance_mean_combined": inst,
                "overall": np.sqrt(inst * sem)}
    out.update({h: headline[h] for h in HEADLINE})

    board_sem: list[tuple[np.ndarray | float, np.ndarray | None]] = []
    board_inst: list[tuple[np.ndarray | float, np.ndarray | None]] = []
    for t in dict.fromkeys(ontology.tested):  # leaderboard's scores dict: tested order, once
        into = board_inst if ontology.is_instance(t) else board_sem
        if t not in ontology.names:
            into.append((0.0, None))  # not predicted: scores 0 in every resample
        elif t in score:
            into.append(score[t])
    b_sem, b_inst = _mean(board_sem, (n_b,)), _mean(board_inst, (n_b,))
    board = {"semantic_mean_iou": b_sem, "instance_mean_combined": b_inst,
             "overall": np.sqrt(b_inst * b_sem)}
    out.update({col: board[key] for col, key in LEADERBOARD_SCORES.items()})
    return out


def _check_confidence(confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    return tail, 1 - tail


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    lo_q, hi_q = _check_confidence(confidence)
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(v, [lo_q, hi_q])
    return float(lo), float(hi)


def intervals(scores: Mapping[str, np.ndarray], confidence: float
              ) -> dict[str, tuple[float, float]]:
    """Percentile interval of each column (NaN resamples, where the class was not drawn, are
    ignored; (nan, nan) when no resample defines it)."""
    _check_confidence(confidence)
    return {col: _interval(v, confidence) for col, v in scores.items()}


def paired_difference(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], column: str,
                      confidence: float) -> dict[str, float]:
    """Interval of a[column] - b[column] over the SAME resamples (both from the same counts),
    and the fraction of resamples (where both are defined) with a > b: {"lo", "hi",
    "p_greater"}. The lead of a over b holds when lo > 0."""
    x, y = np.asarray(a[column], np.float64), np.asarray(b[column], np.float64)
    if x.shape != y.shape:
        raise ValueError(f"{column}: {x.shape} and {y.shape} resamples; pair the same counts")
    diff = x - y
    lo, hi = _interval(diff, confidence)
    defined = ~np.isnan(diff)
    p = float(np.mean(diff[defined] > 0)) if defined.any() else float("nan")
    return {"lo": lo, "hi": hi, "p_greater": p}
