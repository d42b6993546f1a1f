"""Bootstrap over validation crops: every resample scores what aggregate.summarise would give on
eval.csv with each crop's rows repeated by its multiplicity, and paired differences read a lead."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cellmapseg.classes import Ontology
from cellmapseg.config import from_dict
from cellmapseg.evaluate.aggregate import summarise
from cellmapseg.evaluate.bootstrap import (
    column_scores,
    intervals,
    paired_difference,
    resample_counts,
)
from cellmapseg.evaluate.instance import instance_metrics
from cellmapseg.evaluate.metrics import dice, iou
from cellmapseg.evaluate.score import _table
from cellmapseg.report.comparison import HEADLINE, LEADERBOARD, LEADERBOARD_SCORES, Classes

ONTOLOGY: Ontology = from_dict({}).classes  # 14 atomic classes, 4 groups; nuc/mito/ves/endo
CROPS = ["crop_a", "crop_b", "crop_c", "crop_d"]


def sem(crop: str, cls: str, tp: int, fp: int, fn: int) -> dict[str, Any]:
    """A semantic eval.csv row."""
    return {"crop": crop, "crop_id": crop, "class": cls, "kind": "semantic", "tp": tp,
            "fp": fp, "fn": fn, "iou": iou(tp, fp, fn), "dice": dice(tp, fp, fn),
            "n_pred": tp + fp, "n_true": tp + fn, "guard": ""}


def inst(crop: str, cls: str, tp: int, fp: int, fn: int, norm_sum: float = 0.0,
         n_dist: int = 0, guard: str = "") -> dict[str, Any]:
    """An instance eval.csv row (a guard-skipped one carries no counts and no distances)."""
    f1, mean, combined = instance_metrics(tp, fp, fn, norm_sum, n_dist)
    return {"crop": crop, "crop_id": crop, "class": cls, "kind": "instance", "tp": tp,
            "fp": fp, "fn": fn, "f1": f1, "mean_norm_hausdorff": mean, "combined": combined,
            "n_pred": tp + fp, "n_true": tp + fn, "guard": guard,
            "hausdorff_norm_sum": norm_sum, "n_hausdorff": n_dist}


def hand_table() -> pd.DataFrame:
    """Semantic and instance classes; pm annotated in two crops, nuc only in crop_b (and that
    crop guard-skipped), er_mem empty everywhere, mito skipped in crop_d, a class outside the
    ontology's predictions (cell) that pooling ignores."""
    skip = "skipped_too_many_instances"
    return _table([
        sem("crop_a", "ecs", 50, 10, 5), sem("crop_b", "ecs", 7, 30, 2),
        sem("crop_c", "ecs", 0, 3, 11), sem("crop_d", "ecs", 90, 1, 1),
        sem("crop_a", "pm", 20, 20, 20), sem("crop_c", "pm", 3, 0, 9),
        sem("crop_c", "er_mem", 0, 0, 0),
        inst("crop_a", "mito", 3, 1, 2, 3.7, 6), inst("crop_b", "mito", 0, 2, 1, 0.3, 3),
        inst("crop_c", "mito", 5, 0, 0, 4.95, 5), inst("crop_d", "mito", 0, 0, 0, guard=skip),
        inst("crop_b", "nuc", 0, 0, 0, guard=skip),
        inst("crop_a", "ves", 0, 4, 0, 0.0, 0), inst("crop_d", "ves", 2, 0, 1, 1.6, 3),
        inst("crop_a", "cell", 1, 1, 1, 0.5, 2),
    ])


def expected(summary: Mapping[str, Any]) -> dict[str, float]:
    """The comparison's score columns as report/comparison.py reads them off a summary."""
    out = {h: summary[h] for h in HEADLINE}
    out.update({col: summary["leaderboard"][LEADERBOARD[col]] for col in LEADERBOARD_SCORES})
    for c, s in summary["classes"].items():
        if s["kind"] == "instance":
            out.update({f"{c}_f1": s["f1"], f"{c}_norm_hausdorff": s["mean_norm_hausdorff"],
                        f"{c}_combined": s["combined"]})
        else:
            out.update({f"iou_{c}": s["iou"], f"dice_{c}": s["dice"]})
    return out


def materialise(table: pd.DataFrame, crops: list[str], multiplicity: np.ndarray
                ) -> pd.DataFrame:
    """eval.csv with each crop's rows repeated by its multiplicity."""
    parts = [table[table["crop"] == c] for c, m in zip(crops, multiplicity, strict=True)
             for _ in range(int(m))]
    return _table(pd.concat(parts, ignore_index=True))


def assert_matches(values: Mapping[str, float], want: Mapping[str, float]) -> None:
    assert set(values) == set(want)
    for col, v in want.items():
        assert values[col] == pytest.approx(v, rel=1e-12, abs=1e-15), col


def test_identity_resample_reproduces_summarise_for_every_column():
    table = hand_table()
    scores = column_scores(table, CROPS, ONTOLOGY, np.ones((1, len(CROPS)), np.int64))
    assert all(v.shape == (1,) for v in scores.values())
    assert_matches({c: float(v[0]) for c, v in scores.items()},
                   expected(summarise(table, CROPS, ONTOLOGY)))
    # The cases this table is built to cover are really there.
    assert scores["nuc_combined"][0] == 1.0 and scores["iou_er_mem"][0] == 1.0
    assert "cell_f1" not in scores and "iou_golgi_mem" not in scores


def test_column_names_are_the_comparisons():
    scores = column_scores(hand_table(), CROPS, ONTOLOGY, np.ones((1, len(CROPS)), np.int64))
    k = Classes(semantic=("ecs", "pm", "er_mem"), instance=("nuc", "mito", "ves"))
    assert set(scores) == {*HEADLINE, *LEADERBOARD_SCORES, *k.instance_columns,
                           *k.iou_columns, *k.dice_columns}


def test_each_resample_equals_summarise_on_the_repeated_table():
    table = hand_table()
    counts = resample_counts(len(CROPS), 200, seed=3)
    scores = column_scores(table, CROPS, ONTOLOGY, counts)
    missing_b = np.flatnonzero(counts[:, 1] == 0)  # nuc's only crop not drawn
    twice_b = np.flatnonzero(counts[:, 1] >= 2)
    no_pm = np.flatnonzero((counts[:, 0] == 0) & (counts[:, 2] == 0))
    picks = [0, 1, missing_b[0], twice_b[0], no_pm[0]]
    for b in picks:
        want = expected(summarise(materialise(table, CROPS, counts[b]), CROPS, ONTOLOGY))
        got = {c: float(v[b]) for c, v in scores.items() if not math.isnan(v[b])}
        assert_matches(got, want)
    b = missing_b[0]
    assert all(math.isnan(scores[f"nuc_{m}"][b]) for m in ("f1", "norm_hausdorff", "combined"))
    assert not math.isnan(scores["nuc_combined"][twice_b[0]])


def test_rows_of_a_crop_not_listed_are_refused():
    with pytest.raises(ValueError, match="crop_d"):
        column_scores(hand_table(), CROPS[:3], ONTOLOGY, np.ones((1, 3), np.int64))


def test_resample_counts_draw_every_crop_count_with_replacement_reproducibly():
    counts = resample_counts(7, 50, seed=11)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    assert (counts == resample_counts(7, 50, seed=11)).all()
    assert not (counts == resample_counts(7, 50, seed=12)).all()
    assert (counts != 1).any()  # with replacement: some crops twice, some not at all


def random_table(rng: np.random.Generator, crops: list[str], shift: float = 0.0
                 ) -> pd.DataFrame:
    """One semantic and one instance class per crop, quality varying a lot from crop to crop
    (`shift` > 0 moves every crop's counts towards better)."""
    rows = []
    for c in crops:
        size = int(rng.integers(50, 400))
        hit = float(np.clip(rng.uniform(0.2, 0.9) + shift, 0, 1))
        tp = int(size * hit)
        rows.append(sem(c, "ecs", tp, size - tp, int(rng.integers(0, 100))))
        n = int(rng.integers(2, 12))
        found = int(round(n * hit))
        rows.append(inst(c, "mito", found, int(rng.integers(0, 4)), n - found,
                         float(n * hit), n))
    return _table(rows)


def test_identical_entries_differ_by_exactly_zero_in_every_column():
    table = hand_table()
    counts = resample_counts(len(CROPS), 300, seed=5)
    a = column_scores(table, CROPS, ONTOLOGY, counts)
    b = column_scores(table.copy(), CROPS, ONTOLOGY, counts)
    for col in a:
        d = paired_difference(a, b, col, 0.95)
        assert d["lo"] == 0.0 and d["hi"] == 0.0, col
        assert d["p_greater"] == 0.0


def better_and_worse(crops: list[str], swap: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Entry a good and b poor on every crop; with `swap`, the two trade places on every other
    crop (crops in pairs of equal size, so neither is better overall)."""
    good, poor = [], []
    for i, c in enumerate(crops):
        size = 100 * (1 + i // 2)
        g = [sem(c, "ecs", int(0.8 * size), size // 10, size // 10),
             inst(c, "mito", 8, 1, 2, 7.0, 10)]
        p = [sem(c, "ecs", int(0.5 * size), size // 4, size // 4),
             inst(c, "mito", 4, 5, 6, 5.0, 10)]
        if swap and i % 2:
            g, p = p, g
        good += g
        poor += p
    return _table(good), _table(poor)


LEAD_COLUMNS = ("overall", "semantic_mean_iou", "instance_mean_combined", "leaderboard_overall",
                "iou_ecs", "dice_ecs", "mito_f1", "mito_norm_hausdorff", "mito_combined")


def test_an_entry_better_on_every_crop_holds_its_lead():
    crops = [f"crop_{i}" for i in range(12)]
    counts = resample_counts(len(crops), 500, seed=1)
    a, b = (column_scores(t, crops, ONTOLOGY, counts) for t in better_and_worse(crops, False))
    for col in LEAD_COLUMNS:
        d = paired_difference(a, b, col, 0.95)
        assert d["lo"] > 0 and d["p_greater"] == 1.0, col


def test_entries_that_swap_from_crop_to_crop_hold_no_lead():
    crops = [f"crop_{i}" for i in range(12)]
    counts = resample_counts(len(crops), 500, seed=1)
    a, b = (column_scores(t, crops, ONTOLOGY, counts) for t in better_and_worse(crops, True))
    for col in LEAD_COLUMNS:
        ab, ba = paired_difference(a, b, col, 0.95), paired_difference(b, a, col, 0.95)
        assert ab["lo"] < 0 < ab["hi"], col
        assert ba["lo"] < 0 < ba["hi"], col
        assert 0.05 < ab["p_greater"] < 0.95, col


def test_intervals_contain_the_full_sample_value_and_narrow_with_more_crops():
    rng = np.random.default_rng(0)
    crops = [f"crop_{i}" for i in range(40)]
    table = random_table(rng, crops)
    width = {}
    for n in (4, 40):
        use = crops[:n]
        mine = table[table["crop"].isin(use)]
        full = column_scores(mine, use, ONTOLOGY, np.ones((1, n), np.int64))
        ci = intervals(column_scores(mine, use, ONTOLOGY, resample_counts(n, 1000, seed=2)),
                       0.95)
        for col, (lo, hi) in ci.items():
            assert lo <= full[col][0] <= hi, (n, col)
        width[n] = {col: hi - lo for col, (lo, hi) in ci.items()}
    for col in ("overall", "iou_ecs", "dice_ecs", "mito_f1", "mito_combined"):
        assert width[40][col] < width[4][col], col


def test_interval_ignores_undrawn_resamples_and_is_nan_when_none_is_drawn():
    ci = intervals({"x": np.array([np.nan, 1.0, 1.0, np.nan]),
                    "y": np.array([np.nan, np.nan])}, 0.9)
    assert ci["x"] == (1.0, 1.0)
    assert all(math.isnan(v) for v in ci["y"])


def test_interval_is_the_central_percentile_range_and_p_greater_the_share_of_wins():
    values = np.arange(101, dtype=float)  # percentiles are the values themselves
    assert intervals({"x": values}, 0.9)["x"] == pytest.approx((5.0, 95.0))
    d = paired_difference({"x": values}, {"x": np.full(101, 80.0)}, "x", 0.5)
    assert (d["lo"], d["hi"]) == pytest.approx((-55.0, -5.0))
    assert d["p_greater"] == pytest.approx(20 / 101)
