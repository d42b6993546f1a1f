"""Per-class choices of a derived entry (its thresholds.json): for each atomic class, the
threshold (and, for a per-class ensemble, the member) whose pooled challenge score over the
tuning crops is highest, per cross-fitting fold and once over every validation crop (what the
submission uses).

Candidates are eval.csv rows with a `member` and a `threshold` column: a sweep's rows (every
threshold of the grid) or, with fixed thresholds, the members' own eval rows. A class's score
is pooled as the challenge pools it (evaluate.aggregate: IoU for a semantic class, combined
for an instance class). A candidate any of whose rows the challenge's instance-count guard
skipped is never chosen (the guard's skip drops the crop's errors: it would win by
over-segmenting). Ties go to the threshold nearest the fixed one, then to the earlier member,
then to the lower threshold. A class no tuning crop annotates keeps the fixed threshold and
the first member (`tuned`: false). Groups are not chosen: they are the unions of their
members' masks at the members' choices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from cellmapseg.classes import Ontology
from cellmapseg.combine.folds import assign, scored_crops, tuning_crops
from cellmapseg.config import Entry
from cellmapseg.evaluate.aggregate import instance_class, semantic_class

MEAN = "mean"  # the member name of a mean ensemble's averaged probabilities


def class_score(rows: pd.DataFrame) -> float | None:
    """The pooled score of one class's rows; None when there are none or a guard fired."""
    if rows.empty or (rows["guard"].fillna("") != "").any():
        return None
    if rows["kind"].iloc[0] == "instance":
        return float(instance_class(rows)["combined"])
    return float(semantic_class(rows)["iou"])


def choose_classes(candidates: pd.DataFrame, crops: Sequence[str], ontology: Ontology,
                   members: Sequence[str], fixed: Sequence[float]) -> dict[str, dict[str, Any]]:
    """{atomic class: {member, threshold, score, tuned}} chosen on `crops` (crop ids)."""
    rows = candidates[candidates["crop_id"].isin(list(crops))]
    out = {}
    for c, name in enumerate(ontology.atomic):
        best, best_key = None, None
        mine = rows[rows["class"] == name]
        for (member, t), group in mine.groupby(["member", "threshold"], sort=True):
            score = class_score(group)
            if score is None or math.isnan(score):
                continue
            key = (score, -abs(float(t) - fixed[c]), -list(members).index(member), -float(t))
            if best_key is None or key > best_key:
                best_key = key
                best = {"member": str(member), "threshold": float(t), "score": score,
                        "tuned": True}
        out[name] = best or {"member": members[0], "threshold": float(fixed[c]),
                             "score": None, "tuned": False}
    return out


def choices(entry: Entry, crops: Sequence[str], folds: int, candidates: pd.DataFrame,
            ontology: Ontology, fixed: Sequence[float], grid: Sequence[float]
            ) -> dict[str, Any]:
    """thresholds.json of a derived entry: each fold's choices (made on the other folds'
    crops) and the final ones (made on every crop)."""
    members = [MEAN] if entry.method == "mean" else list(entry.members)
    unknown = set(candidates["member"]) - set(members) if not candidates.empty else set()
    if unknown:
        raise ValueError(f"candidates of members {sorted(unknown)} not in {members}")
    assignment = assign(list(crops), folds)
    per_fold = []
    for f in range(folds):
        tuned_on = tuning_crops(assignment, f)
        per_fold.append({"fold": f, "tuned_on": tuned_on, "scored": scored_crops(assignment, f),
                         "classes": choose_classes(candidates, tuned_on, ontology, members,
                                                   fixed)})
    return {"entry": entry.name, "method": entry.method, "thresholds": entry.thresholds,
            "sources": list(entry.members), "members": members,
            "grid": list(grid) if entry.thresholds == "tuned" else None,
            "fixed": list(map(float, fixed)), "folds": folds, "crop_folds": assignment,
            "per_fold": per_fold,
            "final": {"tuned_on": list(crops),
                      "classes": choose_classes(candidates, crops, ontology, members, fixed)}}


def fixed_candidates(tables: Mapping[str, pd.DataFrame], ontology: Ontology,
                     fixed: Sequence[float]) -> pd.DataFrame:
    """Candidates from members' own eval rows (predicted at the fixed thresholds): the atomic
    classes' rows, each with its member and threshold."""
    parts = []
    for member, table in tables.items():
        rows = table[table["class"].isin(ontology.atomic)].copy()
        rows.insert(0, "threshold", [fixed[ontology.channel(c)] for c in rows["class"]])
        rows.insert(0, "member", member)
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def sweep_candidates(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Candidates from sweeps ({member: rows with `threshold`})."""
    parts = []
    for member, table in tables.items():
        rows = table.copy()
        rows.insert(0, "member", member)
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)
