"""Instance matching reproduces the challenge's min-cost-flow choice, ties included, and the
per-instance Hausdorff distances keep the challenge's float32.

The expected matchings come from `official_mapping` below: a small, separate OR-Tools call
that builds the challenge's graph arc by arc (instance_matching.py `_solve_matching_problem`:
source -> truths, truths -> sink, truth -> prediction pairs, predictions -> sink) and reads the
result the same way, so it does not share code with `instance.flow_graph`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ortools.graph.python import min_cost_flow
from scipy.optimize import linear_sum_assignment

from cellmapseg.evaluate import instance
from cellmapseg.evaluate.instance import Overlaps, block_stats, match, score_instances

SP = (8.0, 8.0, 8.0)
SHAPE = (24, 24, 24)
CAP = 96.0  # half of 24 voxels * 8 nm


def official_mapping(rows, cols, iou, n_true: int, n_pred: int) -> dict[int, int]:
    """pred id -> truth id (1-based), solved on the challenge's graph built one arc at a time."""
    source, first_truth, first_pred = 0, 1, 1 + n_true
    sink = first_pred + n_pred
    arcs: list[tuple[int, int, int]] = []  # (tail, head, cost), capacity 1 each
    arcs += [(source, first_truth + i, 0) for i in range(n_true)]
    arcs += [(first_truth + i, sink, 1_000_001) for i in range(n_true)]
    arcs += [(first_truth + int(r), first_pred + int(c), int((1.0 - float(v)) * 1_000_000))
             for r, c, v in zip(rows, cols, np.asarray(iou, np.float32), strict=True)
             if v > 0]
    arcs += [(first_pred + j, sink, 0) for j in range(n_pred)]
    solver = min_cost_flow.SimpleMinCostFlow()
    tails, heads, costs = (np.array(x) for x in zip(*arcs, strict=True))
    solver.add_arcs_with_capacity_and_unit_cost(tails.astype(np.int32), heads.astype(np.int32),
                                                np.ones(len(arcs), np.int64),
                                                costs.astype(np.int64))
    solver.set_node_supply(source, n_true)
    solver.set_node_supply(sink, -n_true)
    assert solver.solve() == solver.OPTIMAL
    out = {}
    for a in range(solver.num_arcs()):
        u, v = solver.tail(a), solver.head(a)
        if solver.flow(a) == 1 and first_truth <= u < first_pred <= v < sink:
            out[v - first_pred + 1] = u - first_truth + 1
    return out


def as_mapping(m: np.ndarray) -> dict[int, int]:
    return {int(p): int(m[p]) for p in np.flatnonzero(m)}


def lsa_mapping(rows, cols, iou, n_true: int, n_pred: int) -> dict[int, int]:
    """What scipy's linear_sum_assignment picks for the same gains (the previous solver)."""
    gain = np.zeros((n_true, n_pred))
    cost = np.floor((1.0 - np.asarray(iou, np.float32).astype(np.float64)) * 1_000_000)
    gain[rows, cols] = 1_000_001 - cost
    a, b = linear_sum_assignment(gain, maximize=True)
    return {int(j) + 1: int(i) + 1 for i, j in zip(a, b, strict=True) if gain[i, j] > 0}


def norm(d: float) -> float:
    """distance.py's normalisation of a distance stored as float32."""
    return 1.01 ** (-float(np.float32(d)) / math.sqrt(sum(v * v for v in SP)))


def box(lo, hi, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def labels(*masks: np.ndarray) -> np.ndarray:
    out = np.zeros(SHAPE, np.uint32)
    for i, m in enumerate(masks, start=1):
        out[m] = i
    return out


def overlaps_of(pred: np.ndarray, truth: np.ndarray) -> tuple[Overlaps, int, int]:
    t, n_true = instance.relabel_components(truth.astype(np.uint32))
    p, n_pred = instance.relabel_components(pred)
    return block_stats(t, p, n_true, n_pred, instance.BLOCK).pairs, n_true, n_pred


def solve_both(pred: np.ndarray, truth: np.ndarray):
    ov, n_true, n_pred = overlaps_of(pred, truth)
    ours = as_mapping(match(ov, n_true, n_pred))
    official = official_mapping(ov.rows, ov.cols, ov.iou, n_true, n_pred)
    return ov, n_true, n_pred, ours, official


# ---- ties ------------------------------------------------------------------------------------

def test_object_split_into_equal_halves_is_matched_as_the_official_graph_decides():
    truth = box((4, 4, 4), (8, 8, 8))
    halves = labels(box((4, 4, 4), (6, 8, 8)), box((6, 4, 4), (8, 8, 8)))  # IoU 1/2 each
    ov, *_, ours, official = solve_both(halves, truth)
    assert np.array_equal(ov.iou, [0.5, 0.5])
    assert ours == official == {1: 1}  # the first half; the second keeps component id 2
    s = score_instances(halves, truth, SP)
    assert (s.tp, s.fp, s.fn, s.n_dist) == (1, 1, 0, 2)
    # truth vs the first half: the far face of the truth is 2 voxels away
    assert s.norm_sum == norm(16.0) + norm(CAP)


def test_equal_iou_fragments_of_two_objects_cross_as_the_official_graph_decides():
    """Two truths, two predictions, all four IoUs equal: the official graph pairs them crosswise
    (prediction 1 -> truth 2), where linear_sum_assignment pairs them straight."""
    t1, t2 = box((2, 2, 2), (4, 6, 6)), box((2, 2, 8), (4, 6, 12))
    p1, p2 = box((2, 2, 2), (4, 4, 12)), box((2, 4, 2), (4, 6, 12))  # bridges over the gap
    pred = labels(p1, p2)
    ov, n_true, n_pred, ours, official = solve_both(pred, t1 | t2)
    assert (n_true, n_pred) == (2, 2) and len(set(ov.iou.tolist())) == 1
    assert ours == official == {1: 2, 2: 1}
    assert lsa_mapping(ov.rows, ov.cols, ov.iou, 2, 2) == {1: 1, 2: 2}
    s = score_instances(pred, t1 | t2, SP)
    assert (s.tp, s.fp, s.fn) == (2, 0, 0)
    # each truth vs the other row of voxels: farthest point 6 voxels along x (and 0 across)
    assert s.norm_sum == norm(48.0) + norm(48.0)


def test_three_equal_fragments_official_choice_differs_from_linear_sum_assignment():
    """One truth cut into three equal slabs: the official graph matches the LAST slab, lsa the
    first. The unmatched first slab keeps component id 1 = the truth's id, so the truth is
    compared with slabs 1 and 3 together (8 nm) instead of slab 1 alone (32 nm)."""
    truth = box((4, 4, 4), (10, 8, 8))
    slabs = labels(box((4, 4, 4), (6, 8, 8)), box((6, 4, 4), (8, 8, 8)),
                   box((8, 4, 4), (10, 8, 8)))
    ov, n_true, n_pred, ours, official = solve_both(slabs, truth)
    assert ours == official == {3: 1}
    lsa = lsa_mapping(ov.rows, ov.cols, ov.iou, n_true, n_pred)
    assert lsa == {1: 1} and lsa != ours  # another optimum of the same cost
    s = score_instances(slabs, truth, SP)
    assert (s.tp, s.fp, s.fn, s.n_dist) == (1, 2, 0, 3)
    assert s.norm_sum == norm(8.0) + 2 * norm(CAP)
    assert s.norm_sum != pytest.approx(norm(32.0) + 2 * norm(CAP))  # what lsa's choice gives


def test_matching_is_the_official_one_on_tie_heavy_random_graphs():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n_true, n_pred = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        rows, cols = np.nonzero(rng.random((n_true, n_pred)) < 0.5)
        iou = rng.choice([0.125, 0.25, 0.5], rows.size).astype(np.float32)  # many equal costs
        ours = as_mapping(match(Overlaps(rows, cols, iou), n_true, n_pred))
        assert ours == official_mapping(rows, cols, iou, n_true, n_pred)


# ---- optimality ------------------------------------------------------------------------------

def test_random_matchings_reach_scipys_optimum_with_as_many_matches():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n_true, n_pred = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        rows, cols = np.nonzero(rng.random((n_true, n_pred)) < 0.4)
        iou = rng.random(rows.size).astype(np.float32)
        table = np.zeros((n_true, n_pred), np.float32)
        table[rows, cols] = iou
        ours = as_mapping(match(Overlaps(rows, cols, iou), n_true, n_pred))
        best = lsa_mapping(rows, cols, iou, n_true, n_pred)
        assert len(ours) == len(best)
        assert len(set(ours.values())) == len(ours)  # one-to-one
        total = sum(float(table[t - 1, p - 1]) for p, t in ours.items())
        optimum = sum(float(table[t - 1, p - 1]) for p, t in best.items())
        assert total == pytest.approx(optimum, abs=1e-5)


def test_pairs_without_overlap_are_never_matched():
    m = match(Overlaps(np.array([0, 1]), np.array([1, 0]), np.array([0.0, 0.3], np.float32)),
              2, 2)
    assert m.tolist() == [0, 2, 0]
    empty = Overlaps(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    assert match(empty, 3, 2).tolist() == [0, 0, 0]


# ---- float32 distances -----------------------------------------------------------------------

def test_many_capped_entries_sum_as_the_official_float32_array():
    """300 false positives in a crop with no truth: 300 caps. The cap (87.6 nm) is not a float32
    number; the official sum normalises the float32 caps in float64 and sums those."""
    voxel = (7.3, 7.3, 7.3)
    pred = np.zeros(SHAPE, np.uint32)
    pred[::2, ::2, ::2].flat[:300] = np.arange(1, 301)  # isolated dots
    s = score_instances(pred, np.zeros(SHAPE, bool), voxel)
    cap = instance.max_distance(voxel, SHAPE)
    assert (s.fp, s.n_dist, s.cap) == (300, 300, cap)
    caps32 = np.full(300, cap, dtype=np.float32)
    official = float(np.sum(1.01 ** (-caps32.astype(np.float64) / np.linalg.norm(voxel))))
    assert s.norm_sum == official
    in_float64 = float(np.sum(1.01 ** (-np.full(300, cap) / np.linalg.norm(voxel))))
    assert s.norm_sum != in_float64  # the dtype matters in the last bits


def test_truth_distance_is_stored_as_float32_before_normalising():
    truth = box((4, 4, 4), (8, 8, 8))
    shifted = box((4, 5, 5), (8, 9, 9)).astype(np.uint8)  # one voxel along y and x
    s = score_instances(shifted, truth, SP)
    d = math.hypot(8.0, 8.0)  # 11.31... nm, not a float32 number
    assert (s.tp, s.n_dist) == (1, 1)
    assert s.norm_sum == norm(d)
    assert s.norm_sum != 1.01 ** (-d / np.linalg.norm(SP))
