"""Instance scores: connected components, one-to-one IoU matching, capped Hausdorff distances.

Rules follow the challenge's eval_utils (see `aggregate.REFERENCE` for the versions read):

* scoring.py `score_instance`: predictions are relabelled by connected components (cc3d,
  26-connectivity in 3D; voxels with different ids are never joined). Our truth NIfTI labels
  carry no instance ids, so truth instances are the 26-connected components of the class mask.
* instance_matching.py `_solve_matching_problem` (followed at commit 2ee63f7ed75f, the one
  `aggregate.REFERENCE` names; the function is byte-identical from 1842645 to 6b9ad68): pairs
  with float32 IoU > 0 are candidates and OR-Tools' SimpleMinCostFlow picks the matching. Nodes:
  source 0, truth i at 1 + i, prediction j at 1 + n_true + j, sink 1 + n_true + n_pred (0-based
  i, j). Arcs, all of capacity 1 and added in one bulk call in this order: source -> every truth
  (cost 0); every truth -> sink (the "unmatched" option, cost 1e6 + 1); truth -> prediction per
  pair in ascending (truth, prediction) order (cost int((1 - IoU) * 1e6), IoU read as float64);
  every prediction -> sink (cost 0). Supplies: +n_true at the source, -n_true at the sink. The
  matching is the truth -> prediction arcs carrying flow 1. This maximises total IoU (ties in
  cost favour more matches); between equal-cost optima the solver's own choice decides which
  prediction is matched, so `match` builds that very graph (same numbering, arc order, costs,
  capacities, supplies) and lets the same solver choose. No IoU threshold.
* Guards (config.py `ratio_cutoff`, instance_matching.py `_check_instance_ratio`): when both
  sides are non-empty and n_pred / n_true > 10 + 50 * exp(-n_true / 5), or more than 5,000,000
  overlapping pairs exist, the crop is skipped: zero counts and no distances, so it neither
  helps nor hurts the class pool (scoring.py `_create_pathological_scores`).
* distance.py (9265574, the version scoring.py 0399649 calls): Hausdorff distance in nm per
  truth instance against the prediction that carries its id after remapping, capped at
  min_i(voxel_size_i * shape_i) / 2; a truth id absent from the prediction gets the cap; each
  unmatched prediction adds one more cap entry (scoring.py `_compute_hausdorff_scores`). Each
  distance d becomes 1.01 ** (-d / ||voxel_size||_2). Dtypes as there: each distance is found
  in float64 (EDT, max, min with the cap) and stored in a float32 array, and the unmatched
  predictions' caps are float32 too; `normalise` casts those float32 values to float64 and
  normalises in float64; the per-crop `norm_sum` is numpy's float64 sum of that array, truth
  ids ascending, then the caps, as scoring.py `score_instance` takes `np.sum(norm)`.
* Remapping (scoring.py, fastremap `preserve_missing_labels=True`): matched predictions take
  their truth id, unmatched predictions KEEP their component id. The reference therefore
  compares an unmatched truth t with an unmatched prediction whose component id happens to be
  t (a real, capped distance instead of the cap). This is reproduced on purpose.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from ortools.graph.python.min_cost_flow import SimpleMinCostFlow
from scipy import ndimage

from cellmapseg.blockwise import ScratchArray, label_components, slices, spans

# config.py EvaluationConfig defaults.
FINAL_RATIO_CUTOFF = 10.0
INITIAL_RATIO_CUTOFF = 50.0
RATIO_FACTOR = 5.0
MAX_OVERLAP_EDGES = 5_000_000
COST_SCALE = 1_000_000  # config.py mcmf_cost_scale
UNMATCH_COST = COST_SCALE + 1  # cost of leaving a truth unmatched
SKIPPED = "skipped_too_many_instances"  # the reference's status string for both guards
BLOCK = 128  # voxels per block side while labelling and counting


def max_distance(voxel_size: Sequence[float], shape: Sequence[int]) -> float:
    """Distance cap (distance.py `compute_max_distance`): half the smallest physical extent."""
    return float(min(v * s / 2 for v, s in zip(voxel_size, shape, strict=True)))


def normalise(distances: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """1.01 ** (-d / ||voxel_size||_2) (distance.py `normalize_distance`): the (float32)
    distances are cast to float64 and normalised in float64, as there."""
    return 1.01 ** (-np.asarray(distances, dtype=np.float64) / np.linalg.norm(voxel_size))


def ratio_cutoff(n_true: int) -> float:
    """Largest allowed n_pred / n_true (config.py `ratio_cutoff`)."""
    return FINAL_RATIO_CUTOFF + INITIAL_RATIO_CUTOFF * math.exp(-n_true / RATIO_FACTOR)


@dataclass(frozen=True)
class Overlaps:
    rows: np.ndarray  # 0-based truth index of each overlapping pair
    cols: np.ndarray  # 0-based prediction index
    iou: np.ndarray  # float32, as the reference stores it


@dataclass(frozen=True)
class FlowGraph:
    """The reference's min-cost-flow problem: arcs in the order they are added, and supplies."""

    tails: np.ndarray  # int32 node ids
    heads: np.ndarray  # int32
    capacities: np.ndarray  # int64, all 1
    costs: np.ndarray  # int64
    source: int
    sink: int
    supply: int  # +supply at the source, -supply at the sink
    pairs: Overlaps  # the candidate pairs, in arc order
    pair_arcs: slice  # their truth -> prediction arcs


def pair_costs(iou: np.ndarray) -> np.ndarray:
    """int((1 - IoU) * 1e6) per pair, IoU read as float64 (truncation = floor: it is >= 0)."""
    return ((1.0 - np.asarray(iou).astype(np.float64)) * COST_SCALE).astype(np.int64)


def _candidates(ov: Overlaps, n_pred: int) -> Overlaps:
    """The pairs the reference puts in its graph: float32 IoU > 0, ascending (truth, pred)."""
    iou = np.asarray(ov.iou, dtype=np.float32)
    rows, cols = np.asarray(ov.rows, np.int64), np.asarray(ov.cols, np.int64)
    keep = iou > 0
    if not keep.all():
        rows, cols, iou = rows[keep], cols[keep], iou[keep]
    key = rows * max(n_pred, 1) + cols
    if key.size > 1 and not np.all(key[1:] > key[:-1]):  # block_stats already sorts them
        order = np.argsort(key, kind="stable")
        rows, cols, iou = rows[order], cols[order], iou[order]
    return Overlaps(rows, cols, iou)


def flow_graph(ov: Overlaps, n_true: int, n_pred: int) -> FlowGraph:
    """Build the min-cost-flow graph exactly as instance_matching.py does (module docstring)."""
    ov = _candidates(ov, n_pred)
    truth = 1 + np.arange(n_true, dtype=np.int64)
    pred = 1 + n_true + np.arange(n_pred, dtype=np.int64)
    source, sink = 0, 1 + n_true + n_pred
    n_pairs = ov.rows.size
    tails = np.concatenate([np.full(n_true, source), truth, 1 + ov.rows, pred])
    heads = np.concatenate([truth, np.full(n_true, sink), 1 + n_true + ov.cols,
                            np.full(n_pred, sink)])
    costs = np.concatenate([np.zeros(n_true, np.int64), np.full(n_true, UNMATCH_COST, np.int64),
                            pair_costs(ov.iou), np.zeros(n_pred, np.int64)])
    return FlowGraph(tails.astype(np.int32), heads.astype(np.int32),
                     np.ones(tails.size, np.int64), costs, source, sink, n_true, ov,
                     slice(2 * n_true, 2 * n_true + n_pairs))


def match(ov: Overlaps, n_true: int, n_pred: int) -> np.ndarray:
    """Optimal one-to-one matching: array m with m[p] = matched truth id of prediction p (or 0).

    Solves the reference's own min-cost-flow graph (`flow_graph`) with OR-Tools'
    SimpleMinCostFlow, so that among equally good matchings the same one is chosen.
    """
    matched = np.zeros(n_pred + 1, dtype=np.int64)
    g = flow_graph(ov, n_true, n_pred)
    if g.pairs.rows.size == 0:  # the reference returns an empty mapping without solving
        return matched
    mcf = SimpleMinCostFlow()
    mcf.add_arcs_with_capacity_and_unit_cost(g.tails, g.heads, g.capacities, g.costs)
    mcf.set_node_supply(g.source, g.supply)
    mcf.set_node_supply(g.sink, -g.supply)
    status = mcf.solve()
    if status != mcf.OPTIMAL:  # cannot happen: every truth may go straight to the sink
        raise RuntimeError(f"min-cost flow matching failed: status {status}")
    arcs = np.arange(g.pair_arcs.start, g.pair_arcs.stop, dtype=np.int32)
    used = np.asarray(mcf.flows(arcs)) == 1
    matched[g.pairs.cols[used] + 1] = g.pairs.rows[used] + 1
    return matched


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


def relabel_components(ids: Any, out: Any = None, block: int | None = None) -> tuple[Any, int]:
    """Connected components of an instance-id volume (26-connectivity; voxels of different ids
    never join), numbered 1..n in raster order, as cc3d numbers them for the reference; `out`
    (default: a new in-memory array) receives them. Read one block at a time.

    Fast path: when every 26-connected foreground component holds a single id, the components
    of the foreground are the answer; otherwise each id is split on its own.
    """
    out = np.zeros(ids.shape, np.uint32) if out is None else out
    edges = (block or BLOCK,) * len(ids.shape)
    n = label_components(ids, out, edges)
    lo = np.full(n + 1, np.iinfo(np.int64).max, np.int64)
    hi = np.full(n + 1, np.iinfo(np.int64).min, np.int64)
    for core in spans(ids.shape, edges):
        window = slices(core)
        comp, values = np.asarray(out[window]), np.asarray(ids[window]).astype(np.int64)
        inside = comp > 0
        np.minimum.at(lo, comp[inside], values[inside])
        np.maximum.at(hi, comp[inside], values[inside])
    if np.array_equal(lo[1:], hi[1:]):  # every component holds a single id
        return out, n
    return out, label_components(ids, out, edges, by_id=True)


@dataclass
class BlockStats:
    """What scoring needs of the labelled volumes, gathered block by block: voxels per id,
    bounding boxes (lo inclusive, hi exclusive, per axis) and overlapping (truth, pred) pairs."""

    true_size: np.ndarray
    pred_size: np.ndarray
    true_box: np.ndarray  # (n_true + 1, 2, ndim)
    pred_box: np.ndarray  # (n_pred + 1, 2, ndim)
    pairs: Overlaps


def _boxes(n: int, ndim: int) -> np.ndarray:
    box = np.empty((n + 1, 2, ndim), np.int64)
    box[:, 0], box[:, 1] = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    return box


def _add_boxes(box: np.ndarray, labels: np.ndarray, core: Sequence[tuple[int, int]]) -> None:
    where = np.nonzero(labels)
    ids = labels[where]
    for axis, (coord, (start, _)) in enumerate(zip(where, core, strict=True)):
        np.minimum.at(box[:, 0, axis], ids, coord + start)
        np.maximum.at(box[:, 1, axis], ids, coord + start + 1)


def _reduce(keys: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    k = np.concatenate(keys)
    uniq, inverse = np.unique(k, return_inverse=True)
    return uniq, np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)


def block_stats(truth: Any, pred: Any, n_true: int, n_pred: int, block: int) -> BlockStats:
    ndim = len(truth.shape)
    true_size, pred_size = np.zeros(n_true, np.int64), np.zeros(n_pred, np.int64)
    true_box, pred_box = _boxes(n_true, ndim), _boxes(n_pred, ndim)
    keys: list[np.ndarray] = [np.empty(0, np.int64)]
    counts: list[np.ndarray] = [np.empty(0, np.int64)]
    pending = 0
    for core in spans(truth.shape, (block,) * ndim):
        window = slices(core)
        t, p = np.asarray(truth[window]), np.asarray(pred[window])
        true_size += np.bincount(t[t > 0].astype(np.int64) - 1, minlength=n_true)
        pred_size += np.bincount(p[p > 0].astype(np.int64) - 1, minlength=n_pred)
        _add_boxes(true_box, t, core)
        _add_boxes(pred_box, p, core)
        both = (t > 0) & (p > 0)
        k, c = np.unique((t[both].astype(np.int64) - 1) * n_pred + (p[both].astype(np.int64) - 1),
                         return_counts=True)
        keys.append(k)
        counts.append(c)
        pending += k.size
        if pending > 4 * MAX_OVERLAP_EDGES:  # fold the per-block lists: memory follows the pairs
            merged = _reduce(keys, counts)
            keys, counts, pending = [merged[0]], [merged[1]], merged[0].size
    uniq, inter = _reduce(keys, counts)
    rows, cols = (uniq // n_pred, uniq % n_pred) if n_pred else (uniq, uniq)
    union = true_size[rows] + pred_size[cols] - inter
    pairs = Overlaps(rows, cols, (inter / union).astype(np.float32))
    return BlockStats(true_size, pred_size, true_box, pred_box, pairs)


def _union(boxes: np.ndarray) -> tuple[slice, ...] | None:
    present = boxes[boxes[:, 0, 0] <= boxes[:, 1, 0]]
    if present.size == 0:
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(present[:, 0].min(0), present[:, 1].max(0),
                                                      strict=True))


def truth_distances(truth: Any, pred: Any, stats: BlockStats, matched: np.ndarray,
                    voxel_size: Sequence[float], cap: float) -> np.ndarray:
    """Hausdorff distance of each truth id to the prediction that carries its id after the
    reference's remapping: the predictions matched to it, and an unmatched prediction whose own
    component id equals it (fastremap's preserve_missing_labels).

    Each is computed inside the union of the bounding boxes involved: every voxel of either
    mask lies inside, so the distances equal the whole-volume ones (the reference pads this
    box; no effect). Only that box of each volume is read."""
    n_true = stats.true_size.size
    carriers: list[list[int]] = [[] for _ in range(n_true + 1)]
    for p in np.flatnonzero(matched):
        carriers[matched[p]].append(int(p))
    for t in range(1, min(n_true, matched.size - 1) + 1):
        if matched[t] == 0:
            carriers[t].append(t)  # unmatched: keeps its component id
    out = np.empty(n_true, dtype=np.float32)  # float32, as distance.py stores them
    for t in range(1, n_true + 1):
        ps = np.asarray(carriers[t], np.int64)
        box = _union(np.concatenate([stats.true_box[t:t + 1], stats.pred_box[ps]]))
        a = np.asarray(truth[box]) == t
        b = np.isin(np.asarray(pred[box]), ps) if ps.size else np.zeros_like(a)
        out[t - 1] = hausdorff(a, b, voxel_size, cap)
    return out


def score_instances(pred_ids: Any, truth_mask: Any, voxel_size: Sequence[float],
                    cap: float | None = None, block: int | None = None,
                    scratch: str | Path | None = None) -> InstanceScore:
    """Score one crop's instance prediction (ids, 0 = background) against a truth class mask.

    Both may be arrays in memory or anything sliceable block by block (a Zarr array, a
    blockwise.ScratchArray, a blockwise.ValueMask over a label): their components are
    written to scratch files in `scratch` (default: the system's temporary folder), so memory
    follows the block and the largest instance's bounding box, never the crop.
    """
    if tuple(pred_ids.shape) != tuple(truth_mask.shape):
        raise ValueError(f"prediction shape {tuple(pred_ids.shape)} != truth shape "
                         f"{tuple(truth_mask.shape)}")
    shape = tuple(truth_mask.shape)
    voxel_size = tuple(float(v) for v in voxel_size)
    cap = max_distance(voxel_size, shape) if cap is None else float(cap)
    block = block or BLOCK
    with tempfile.TemporaryDirectory(prefix=".instances-", dir=scratch) as tmp:
        truth = ScratchArray(Path(tmp) / "truth.npy", shape, np.uint32)
        n_true = label_components(truth_mask, truth, (block,) * len(shape))
        return score_against_ids(pred_ids, truth, n_true, voxel_size, cap, block, Path(tmp))


def score_against_ids(pred_ids: Any, truth: ScratchArray, n_true: int,
                      voxel_size: tuple[float, ...], cap: float, block: int, tmp: Path
                      ) -> InstanceScore:
    """The score against truth instances already numbered 1..n_true in `truth`: the
    prediction's components relabelled (a scratch copy in `tmp`), the guards, the matching,
    the distances and their normalisation."""
    shape = tuple(truth.shape)
    pred, n_pred = relabel_components(pred_ids, ScratchArray(tmp / "pred.npy", shape,
                                                             np.uint32), block)
    skipped = InstanceScore(0, 0, 0, n_pred, n_true, 0.0, 0, cap)
    reason = guard_reason(n_true, n_pred)
    if reason:
        return replace(skipped, guard=reason)
    stats = block_stats(truth, pred, n_true, n_pred, block)
    if stats.pairs.rows.size > MAX_OVERLAP_EDGES:
        reason = f"{SKIPPED}: {stats.pairs.rows.size} overlapping pairs > {MAX_OVERLAP_EDGES}"
        return replace(skipped, guard=reason)
    matched = match(stats.pairs, n_true, n_pred)
    tp = int(np.count_nonzero(matched))
    fp = n_pred - tp
    dist = np.concatenate([truth_distances(truth, pred, stats, matched, voxel_size, cap),
                           np.full(fp, cap, dtype=np.float32)])
    norm = normalise(dist, voxel_size)
    return InstanceScore(tp, fp, n_true - tp, n_pred, n_true, float(norm.sum()), int(norm.size),
                         cap)
