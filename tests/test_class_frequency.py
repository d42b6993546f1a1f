"""Class frequencies from the inventory (counted only over crops that annotate each class), the
loss weights and crop sampling weights derived from them, and the class-weighted sampler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import ATOMIC, ONTOLOGY

from cellmapseg.data.class_frequency import class_frequencies, class_weights, crop_weights
from cellmapseg.data.sampling import WeightedEpochSampler


def inventory(rows: list[tuple[str, int, dict[str, int]]]) -> pd.DataFrame:
    """(annotated channels, voxels, {class: voxels}) per crop."""
    out = []
    for i, (annotated, voxels, counts) in enumerate(rows):
        out.append({"crop": f"c{i}", "annotated_classes": annotated, "voxels": voxels,
                    **{f"vox_{c}": counts.get(c, 0) for c in ATOMIC}})
    return pd.DataFrame(out)


ECS, PM, NUC = ATOMIC.index("ecs"), ATOMIC.index("pm"), ATOMIC.index("nuc")
INV = inventory([
    (f"{ECS},{PM}", 1000, {"ecs": 500, "pm": 10}),
    (f"{ECS}", 1000, {"ecs": 100, "pm": 400}),  # pm voxels here are unknown, not counted
    (f"{ECS},{NUC}", 2000, {"nuc": 20}),
])


def test_frequencies_count_only_the_crops_that_annotate_each_class():
    f = class_frequencies(INV, ONTOLOGY)
    assert f[ECS] == pytest.approx(600 / 4000)
    assert f[PM] == pytest.approx(10 / 1000)
    assert f[NUC] == pytest.approx(20 / 2000)
    assert np.isnan(f[ATOMIC.index("er_mem")])  # annotated nowhere


@pytest.mark.parametrize("rule, formula", [
    ("inverse", lambda f: 1 / f), ("sqrt_inverse", lambda f: 1 / np.sqrt(f)),
    ("log_inverse", lambda f: 1 / np.log(1.02 + f))])
def test_weights_follow_the_rule_with_mean_one_over_annotated_classes(rule, formula):
    f = class_frequencies(INV, ONTOLOGY)
    w = np.array(class_weights(rule, f))
    known = [ECS, PM, NUC]
    raw = formula(f[known])
    np.testing.assert_allclose(w[known], raw / raw.mean())
    assert w[known].mean() == pytest.approx(1.0)
    assert (np.delete(w, known) == 1.0).all()  # never in the loss: any weight would do
    assert w[PM] > w[ECS]


def test_crops_holding_rarer_classes_are_weighted_by_the_rarest():
    w = crop_weights(INV, ONTOLOGY)
    f = class_frequencies(INV, ONTOLOGY)
    raw = np.array([f[PM] ** -0.5, f[ECS] ** -0.5, f[NUC] ** -0.5])  # crop 1: pm not annotated
    np.testing.assert_allclose(w, raw / raw.sum())


def test_weighted_draws_match_their_weights_over_many_epochs():
    p = np.array([0.1, 0.2, 0.7])
    sampler = WeightedEpochSampler(p, length=30, rank=0, world_size=1, seed=3)
    counts = np.zeros(3)
    for epoch in range(400):
        sampler.set_epoch(epoch)
        for _, key in sampler:
            counts[key % 3] += 1
    n = counts.sum()
    assert n == 12000
    # within 4 standard deviations of the binomial count of each volume
    assert (np.abs(counts - n * p) < 4 * np.sqrt(n * p * (1 - p))).all()


def test_weighted_draws_are_deterministic_shared_by_ranks_and_unique_per_draw():
    p = [0.5, 0.25, 0.25]
    make = lambda rank: WeightedEpochSampler(p, length=9, rank=rank, world_size=2, seed=1)  # noqa: E731
    ranks = [make(0), make(1)]
    for s in ranks:
        s.set_epoch(5)
    keys = [list(s) for s in ranks]
    assert len(keys[0]) == len(keys[1]) == len(ranks[0]) == 5  # 9 draws padded to 2 x 5
    drawn = keys[0] + keys[1]
    assert len(set(drawn)) == 9  # every draw once, one repeated as padding
    again = make(0)
    again.set_epoch(5)  # a resumed run redraws the same epoch
    assert list(again) == keys[0]
    again.set_epoch(6)
    assert list(again) != keys[0]
    assert all(epoch == 5 for epoch, _ in drawn)
