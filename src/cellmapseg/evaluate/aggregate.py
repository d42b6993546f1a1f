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

from cellmapseg.classes import CLASS_NAMES
from cellmapseg.evaluate.instance import instance_metrics
from cellmapseg.evaluate.metrics import dice, iou

# What was read of janelia-cellmap/cellmap-segmentation-challenge,
# src/cellmap_segmentation_challenge/utils/eval_utils/ (the target commit 6b9ad68 itself was
# not in the stored index; these are the newest stored versions, mutually consistent).
REFERENCE: dict[str, str] = {
    "scoring.py": "0399649",
    "aggregation.py": "newest stored (per-instance Hausdorff pooling; commit not shown)",
    "instance_matching.py": "2ee63f7",
    "distance.py": "1380321",
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


def pool_classes(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Pooled scores of every class with at least one row, in CLASS_NAMES order."""
    out: dict[str, dict[str, Any]] = {}
    for name in CLASS_NAMES:
        mine = rows[rows["class"] == name]
        if mine.empty:
            continue
        kind = mine["kind"].iloc[0]
        out[name] = instance_class(mine) if kind == "instance" else semantic_class(mine)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarise(rows: pd.DataFrame, crops: Sequence[str]) -> dict[str, Any]:
    """eval_summary.json content from the per-(crop, class) rows."""
    classes = pool_classes(rows)
    semantic = _mean([c["iou"] for c in classes.values() if c["kind"] == "semantic"])
    instance = _mean([c["combined"] for c in classes.values() if c["kind"] == "instance"])
    return {
        "metric_version": METRIC_VERSION,
        "reference": REFERENCE,
        "crops": list(crops),
        "n_crops": len(crops),
        "classes": classes,
        "semantic_mean_iou": semantic,
        "instance_mean_combined": instance,
        "overall": math.sqrt(instance * semantic),
    }
