"""Instance scores: connected components, one-to-one IoU matching, capped Hausdorff distances.

Rules follow the challenge's eval_utils (see `aggregate.REFERENCE` for the versions read):

* scoring.py `score_instance`: predictions are relabelled by connected components (cc3d,
  26-connectivity in 3D; voxels with different ids are never joined). Our truth NIfTI labels
  carry no instance ids, so truth instances are the 26-connected components of the class mask.
* instance_matching.py: pairs with IoU > 0 are candidates; a min-cost flow picks a one-to-one
  matching with integer costs int((1 - IoU) * 1e6) per match and 1e6 + 1 per unmatched truth,
  i.e. it maximises total IoU (ties favour more matches). No IoU threshold.
* Guards (config.py `ratio_cutoff`, instance_matching.py `_check_instance_ratio`): when both
  sides are non-empty and n_pred / n_true > 10 + 50 * exp(-n_true / 5), or more than 5,000,000
  overlapping pairs exist, the crop is skipped: zero counts and no distances, so it neither
  helps nor hurts the class pool (scoring.py `_create_pathological_scores`).
* distance.py: Hausdorff distance in nm per truth instance against the prediction that carries
  its id after remapping, capped at min_i(voxel_size_i * shape_i) / 2; a truth id absent from
  the prediction gets the cap; each unmatched prediction adds one more cap entry (scoring.py
  `_compute_hausdorff_scores`). Each distance d becomes 1.01 ** (-d / ||voxel_size||_2).
* Remapping (scoring.py, fastremap `preserve_missing_labels=True`): matched predictions take
  their truth id, unmatched predictions KEEP their component id. The reference therefore
  compares an unmatched truth t with an unmatched prediction whose component id happens to be
  t (a real, capped distance instead of the cap). This is reproduced on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# config.py EvaluationConfig defaults.
FINAL_RATIO_CUTOFF = 10.0
INITIAL_RATIO_CUTOFF = 50.0
RATIO_FACTOR = 5.0
MAX_OVERLAP_EDGES = 5_000_000
COST_SCALE = 1_000_000
SKIPPED = "skipped_too_many_instances"  # the reference's status string for both guards


def full_connectivity(ndim: int) -> np.ndarray:
    """26-connectivity in 3D (every neighbour sharing a face, edge or corner)."""
    return np.ones((3,) * ndim, dtype=bool)


def truth_instances(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Truth instances of a class mask: its 26-connected components, numbered 1..n in raster
    order. (Our NIfTI labels store one value per class, not instance ids.)"""
    labels, n = ndimage.label(mask, structure=full_connectivity(mask.ndim))
    return labels, int(n)


def raster_order(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 1..n by the raster position of each label's first voxel (cc3d's order)."""
    values = labels[labels > 0]
    uniq, first = np.unique(values, return_index=True)
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[uniq[np.argsort(first)]] = np.arange(1, uniq.size + 1, dtype=np.int32)
    return lut[labels]


def _split_by_id(ids: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, int]:
    """Components of each id separately (touching objects with different ids stay apart)."""
    structure = full_connectivity(ids.ndim)
    _, inverse = np.unique(ids[foreground], return_inverse=True)
    compact = np.zeros(ids.shape, dtype=np.int32)
    compact[foreground] = inverse.astype(np.int32) + 1
    out = np.zeros(ids.shape, dtype=np.int32)
    n = 0
    for k, box in enumerate(ndimage.find_objects(compact), start=1):
        mine = compact[box] == k
        labels, m = ndimage.label(mine, structure=structure)
        out[box][mine] = labels[mine] + n
        n += int(m)
    return raster_order(out), n


def relabel_components(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of an instance-id volume, numbered 1..n in raster order.

    Fast path: when every 26-connected foreground component holds a single id, the components
    of the foreground are the answer; otherwise each id is split on its own.
    """
    foreground = ids != 0
    labels, n = ndimage.label(foreground, structure=full_connectivity(ids.ndim))
    if n == 0:
        return labels, 0
    in_comp, fg_ids = labels[foreground], ids[foreground]
    sample = np.zeros(n + 1, dtype=ids.dtype)
    sample[in_comp] = fg_ids  # some voxel's id per component (whichever write lands)
    if np.array_equal(sample[in_comp], fg_ids):  # every component holds a single id
        return labels, int(n)
    return _split_by_id(ids, foreground)


def max_distance(voxel_size: Sequence[float], shape: Sequence[int]) -> float:
    """Distance cap (distance.py `compute_max_distance`): half the smallest physical extent."""
    return float(min(v * s / 2 for v, s in zip(voxel_size, shape, strict=True)))


def normalise(distances: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """1.01 ** (-d / ||voxel_size||_2) (distance.py `normalize_distance`)."""
    return 1.01 ** (-np.asarray(distances, dtype=np.float64) / np.linalg.norm(voxel_size))


def ratio_cutoff(n_true: int) -> float:
    """Largest allowed n_pred / n_true (config.py `ratio_cutoff`)."""
    return FINAL_RATIO_CUTOFF + INITIAL_RATIO_CUTOFF * math.exp(-n_true / RATIO_FACTOR)


@dataclass(frozen=True)
class Overlaps:
    rows: np.ndarray  # 0-based truth index of each overlapping pair
    cols: np.ndarray  # 0-based prediction index
    iou: np.ndarray  # float32, as the reference stores it


def overlap_pairs(truth: np.ndarray, pred: np.ndarray, n_true: int, n_pred: int) -> Overlaps:
    """Every (truth, prediction) pair sharing at least one voxel, with its IoU."""
    both = (truth > 0) & (pred > 0)
    keys, inter = np.unique(
        (truth[both].astype(np.int64) - 1) * n_pred + (pred[both].astype(np.int64) - 1),
        return_counts=True,
    )
    rows, cols = keys // n_pred, keys % n_pred
    true_size = np.bincount(truth[truth > 0].astype(np.int64) - 1, minlength=n_true)
    pred_size = np.bincount(pred[pred > 0].astype(np.int64) - 1, minlength=n_pred)
    union = true_size[rows] + pred_size[cols] - inter
    return Overlaps(rows, cols, (inter / union).astype(np.float32))


def match_weights(iou: np.ndarray) -> np.ndarray:
    """Per-pair gain of matching (>= 1): the reference's unmatch cost minus its match cost."""
    cost = np.floor((1.0 - iou.astype(np.float64)) * COST_SCALE)
    return (COST_SCALE + 1) - cost


def match(ov: Overlaps, n_true: int, n_pred: int) -> np.ndarray:
    """Optimal one-to-one matching: array m with m[p] = matched truth id of prediction p (or 0).

    Equivalent to the reference's min-cost flow: maximise the summed `match_weights`. Solved
    with linear_sum_assignment per connected component of the overlap graph (small blocks).
    """
    matched = np.zeros(n_pred + 1, dtype=np.int64)
    if ov.rows.size == 0:
        return matched
    weight = match_weights(ov.iou)
    graph = coo_matrix((np.ones(ov.rows.size), (ov.rows, n_true + ov.cols)),
                       shape=(n_true + n_pred,) * 2)
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[ov.rows]
    sizes = np.bincount(edge_comp)
    single = sizes[edge_comp] == 1  # an isolated pair: match it outright
    matched[ov.cols[single] + 1] = ov.rows[single] + 1
    multi = np.flatnonzero(~single)
    if multi.size == 0:
        return matched
    for edges in np.split(multi[np.argsort(edge_comp[multi], kind="stable")],
                          np.cumsum(sizes[np.unique(edge_comp[multi])])[:-1]):
        _solve_block(ov.rows[edges], ov.cols[edges], weight[edges], matched)
    return matched


def _solve_block(rows: np.ndarray, cols: np.ndarray, weight: np.ndarray,
                 matched: np.ndarray) -> None:
    urow, ri = np.unique(rows, return_inverse=True)
    ucol, ci = np.unique(cols, return_inverse=True)
    dense = np.zeros((urow.size, ucol.size))
    dense[ri, ci] = weight
    a, b = linear_sum_assignment(dense, maximize=True)
    keep = dense[a, b] > 0  # a zero entry is no overlap: not a match
    matched[ucol[b[keep]] + 1] = urow[a[keep]] + 1


def remap(pred: np.ndarray, matched: np.ndarray) -> np.ndarray:
    """Matched predictions take their truth id; unmatched ones keep their own id (reference)."""
    lut = np.arange(matched.size, dtype=np.int64)
    hit = matched > 0
    lut[hit] = matched[hit]
    return lut[pred]


def hausdorff(a: np.ndarray, b: np.ndarray, voxel_size: Sequence[float], cap: float) -> float:
    """Symmetric Hausdorff distance (nm) between two masks, capped; cap if one is empty."""
    a_any, b_any = bool(a.any()), bool(b.any())
    if not (a_any or b_any):
        return 0.0
    if not (a_any and b_any):
        return cap
    to_b = ndimage.distance_transform_edt(~b, sampling=voxel_size)
    to_a = ndimage.distance_transform_edt(~a, sampling=voxel_size)
    return float(min(max(to_b[a].max(), to_a[b].max()), cap))


def _union_box(boxes: Sequence[tuple[slice, ...] | None]) -> tuple[slice, ...]:
    present = [b for b in boxes if b is not None]
    return tuple(slice(min(b[d].start for b in present), max(b[d].stop for b in present))
                 for d in range(len(present[0])))


def truth_distances(truth: np.ndarray, n_true: int, pred: np.ndarray,
                    voxel_size: Sequence[float], cap: float) -> np.ndarray:
    """Hausdorff distance of each truth id 1..n_true to the prediction voxels with that id.

    Computed inside the union of both bounding boxes: every voxel of either mask lies inside,
    so the distances equal the whole-volume ones (the reference pads this box; no effect).
    """
    t_boxes = ndimage.find_objects(truth, max_label=n_true)
    p_boxes = ndimage.find_objects(pred, max_label=n_true)
    out = np.empty(n_true, dtype=np.float64)
    for i in range(n_true):
        box = _union_box([t_boxes[i], p_boxes[i]])
        out[i] = hausdorff(truth[box] == i + 1, pred[box] == i + 1, voxel_size, cap)
    return out


def instance_metrics(tp: int, fp: int, fn: int, norm_sum: float, n_dist: int
                     ) -> tuple[float, float, float]:
    """(F1, mean normalised Hausdorff, combined = sqrt(F1 * mean)) as aggregation.py defines them
    per class: nothing anywhere (no counts, no distances) scores 1.0 on all three."""
    denom = 2 * tp + fp + fn
    if denom == 0 and n_dist == 0:
        return 1.0, 1.0, 1.0
    f1 = 2 * tp / denom if denom > 0 else 0.0
    mean = norm_sum / n_dist if n_dist > 0 else 0.0
    return f1, mean, math.sqrt(f1 * mean)


@dataclass(frozen=True)
class InstanceScore:
    tp: int
    fp: int
    fn: int
    n_pred: int  # predicted connected components
    n_true: int  # truth connected components
    norm_sum: float  # sum of normalised distances (pooled per class)
    n_dist: int  # number of distances in norm_sum
    cap: float  # distance cap in nm
    guard: str = ""  # why the crop was skipped, or ""

    def metrics(self) -> tuple[float, float, float]:
        """Per-crop (F1, mean normalised distance, combined); NaN when a guard fired."""
        if self.guard:
            return math.nan, math.nan, math.nan
        return instance_metrics(self.tp, self.fp, self.fn, self.norm_sum, self.n_dist)


def guard_reason(n_true: int, n_pred: int) -> str:
    """The ratio guard's reason, or "" (only applies when both sides have instances)."""
    if n_true == 0 or n_pred == 0:
        return ""
    cutoff = ratio_cutoff(n_true)
    if n_pred / n_true <= cutoff:
        return ""
    return (f"{SKIPPED}: {n_pred} predicted vs {n_true} true instances "
            f"(ratio {n_pred / n_true:.2f} > cutoff {cutoff:.2f})")


def score_instances(pred_ids: np.ndarray, truth_mask: np.ndarray,
                    voxel_size: Sequence[float], cap: float | None = None) -> InstanceScore:
    """Score one crop's instance prediction (ids, 0 = background) against a truth class mask.

    Needs both whole volumes in memory (as the reference does); only semantic classes are
    counted block by block.
    """
    if pred_ids.shape != truth_mask.shape:
        raise ValueError(f"prediction shape {pred_ids.shape} != truth shape {truth_mask.shape}")
    voxel_size = tuple(float(v) for v in voxel_size)
    cap = max_distance(voxel_size, truth_mask.shape) if cap is None else float(cap)
    truth, n_true = truth_instances(truth_mask)
    pred, n_pred = relabel_components(pred_ids)
    skipped = InstanceScore(0, 0, 0, n_pred, n_true, 0.0, 0, cap)
    reason = guard_reason(n_true, n_pred)
    if reason:
        return replace(skipped, guard=reason)
    ov = (overlap_pairs(truth, pred, n_true, n_pred) if n_true and n_pred
          else Overlaps(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)))
    if ov.rows.size > MAX_OVERLAP_EDGES:
        reason = f"{SKIPPED}: {ov.rows.size} overlapping pairs > {MAX_OVERLAP_EDGES}"
        return replace(skipped, guard=reason)
    matched = match(ov, n_true, n_pred)
    tp = int(np.count_nonzero(matched))
    fp = n_pred - tp
    dist = np.concatenate([truth_distances(truth, n_true, remap(pred, matched), voxel_size, cap),
                           np.full(fp, cap)])
    norm = normalise(dist, voxel_size)
    return InstanceScore(tp, fp, n_true - tp, n_pred, n_true, float(norm.sum()), int(norm.size),
                         cap)
