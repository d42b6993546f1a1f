"""Per-class pooling over crops and the overall score, as the challenge's aggregation.py does.

* Semantic class: IoU = sum TP / (sum TP + sum FP + sum FN), 1.0 when that is 0 (pooled, not
  a mean of per-crop IoUs). Dice, pooled the same way, is reported beside it (not in the
  reference's aggregate).
* Instance class: F1 = 2 sum TP / (2 sum TP + sum FP + sum FN), 0 when that is 0 but distances
  exist; mean normalised Hausdorff = sum of all pooled per-instance values / their count;
  combined = sqrt(F1 * mean); a class with no counts and no distances anywhere scores 1.0.
* Overall: plain (unweighted) mean of the per-class IoUs of the semantic classes scored, plain
  mean of the per-class combined scores of the instance classes scored (0 when there are
  none, as in the reference), overall = sqrt(instance mean * semantic mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from cellmapseg.classes import Ontology
from cellmapseg.evaluate.instance import instance_metrics
from cellmapseg.evaluate.metrics import dice, iou

# What was read of janelia-cellmap/cellmap-segmentation-challenge,
# src/cellmap_segmentation_challenge/utils/eval_utils/ (the target commit 6b9ad68 itself was
# not in the stored index; these are the newest stored versions, mutually consistent).
REFERENCE: dict[str, str] = {
    "scoring.py": "0399649",
    "aggregation.py": "newest stored (per-instance Hausdorff pooling; commit not shown)",
    "instance_matching.py": "2ee63f7",
    "distance.py": "9265574",
    "config.py": "1842645",
    "types.py": "1842645",
    "submission.py": "3de888c",
}
METRIC_VERSION = "cellmap-eval@0399649"


def _sums(rows: pd.DataFrame) -> dict[str, Any]:
    return {k: int(rows[k].sum()) for k in ("tp", "fp", "fn")}


def semantic_class(rows: pd.DataFrame) -> dict[str, Any]:
    s = _sums(rows)
    return {"kind": "semantic", **s, "iou": iou(**s), "dice": dice(**s), "crops": len(rows)}


def instance_class(rows: pd.DataFrame) -> dict[str, Any]:
    s = _sums(rows)
    norm_sum = float(rows["hausdorff_norm_sum"].sum())
    n_dist = int(rows["n_hausdorff"].sum())
    f1, mean, combined = instance_metrics(s["tp"], s["fp"], s["fn"], norm_sum, n_dist)
    skipped = int((rows["guard"].fillna("") != "").sum())
    return {"kind": "instance", **s, "f1": f1, "mean_norm_hausdorff": mean,
            "combined": combined, "n_hausdorff": n_dist, "crops": len(rows),
            "skipped_crops": skipped}


def pool_classes(rows: pd.DataFrame, ontology: Ontology) -> dict[str, dict[str, Any]]:
    """Pooled scores of every class with at least one row, in the ontology's order."""
    out: dict[str, dict[str, Any]] = {}
    for name in ontology.names:
        mine = rows[rows["class"] == name]
        if mine.empty:
            continue
        kind = mine["kind"].iloc[0]
        out[name] = instance_class(mine) if kind == "instance" else semantic_class(mine)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _score(entry: dict[str, Any]) -> float:
    return entry["combined"] if entry["kind"] == "instance" else entry["iou"]


def leaderboard(classes: dict[str, dict[str, Any]], ontology: Ontology) -> dict[str, Any]:
    """The score as the challenge computes it over the tested classes (classes.tested): a
    tested class the ontology does not predict scores 0 (the challenge scores an unsubmitted
    class as all false negatives); one the model predicts but no scored crop annotates cannot
    be estimated here and is left out, and said so. Instance or semantic: classes.instance."""
    tested = list(ontology.tested)
    scores: dict[str, float] = {}
    not_predicted = [t for t in tested if t not in ontology.names]
    no_truth = [t for t in tested if t in ontology.names and t not in classes]
    for t in tested:
        if t in not_predicted:
            scores[t] = 0.0
        elif t in classes:
            scores[t] = _score(classes[t])
    instance = [scores[t] for t in scores if ontology.is_instance(t)]
    semantic = [scores[t] for t in scores if not ontology.is_instance(t)]
    covered = len(tested) - len(not_predicted)
    line = (f"covers {covered} of {len(tested)} tested classes ({len(not_predicted)} not "
            f"predicted score 0)")
    if no_truth:
        line += f"; {len(no_truth)} predicted but unannotated in these crops left out"
    inst, sem = _mean(instance), _mean(semantic)
    return {"tested": tested, "n_tested": len(tested), "covered": covered,
            "not_predicted": not_predicted, "no_truth": no_truth, "scores": scores,
            "semantic_mean_iou": sem, "instance_mean_combined": inst,
            "overall": math.sqrt(inst * sem), "line": line}


def summarise(rows: pd.DataFrame, crops: Sequence[str], ontology: Ontology) -> dict[str, Any]:
    """eval_summary.json content from the per-(crop, class) rows: scores over the classes
    scored, and the leaderboard's view over the tested classes."""
    classes = pool_classes(rows, ontology)
    semantic = _mean([c["iou"] for c in classes.values() if c["kind"] == "semantic"])
    instance = _mean([c["combined"] for c in classes.values() if c["kind"] == "instance"])
    return {
        "metric_version": METRIC_VERSION,
        "reference": REFERENCE,
        "crops": list(crops),
        "n_crops": len(crops),
        "ontology": ontology.summary(),
        "classes": classes,
        "semantic_mean_iou": semantic,
        "instance_mean_combined": instance,
        "overall": math.sqrt(instance * semantic),
        "leaderboard": leaderboard(classes, ontology),
    }
