"""Scoring speed: seconds per crop of SIZE^3 (default 256) for the semantic and instance paths.

Semantic: counts read block by block from a Zarr prediction. Instance: whole-crop matching and
distances. Truth: a synthetic label with 12 nucleus-like blobs (instances) and a semantic class;
prediction: the truth shifted by 2 voxels, one blob dropped and one split, so matching and the
distance transforms do real work.

    python benchmarks/evaluate_speed.py [--size 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage as ndi

from cellmapseg.evaluate.instance import score_instances
from cellmapseg.evaluate.semantic import semantic_counts


def make_case(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    grid = np.ogrid[(slice(0, size),) * 3]
    truth = np.zeros((size,) * 3, np.uint8)
    for _ in range(12):
        c, r = rng.uniform(0.15, 0.85, 3) * size, rng.uniform(0.04, 0.1) * size
        truth[sum((g - x) ** 2 for g, x in zip(grid, c, strict=True)) < r * r] = 14
    smooth = ndi.gaussian_filter(rng.standard_normal(truth.shape).astype(np.float32), 4)
    truth[(truth == 0) & (smooth > 0.05)] = 4  # a semantic class
    shifted = np.roll(truth, 2, axis=0)
    pred_sem = (shifted == 4).astype(np.uint8)
    pred_ids, _ = ndi.label(shifted == 14, structure=np.ones((3, 3, 3)))
    pred_ids[pred_ids == 3] = 0  # a dropped object
    pred_ids[: size // 2][pred_ids[: size // 2] == 5] = 99  # a split object
    return truth, pred_sem, pred_ids.astype(np.uint32)


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    truth, pred_sem, pred_ids = make_case(a.size)
    with tempfile.TemporaryDirectory() as tmp:  # the stage reads predictions from Zarr
        stored = zarr.open_array(f"{tmp}/p.zarr", mode="w", shape=pred_sem.shape,
                                 chunks=(64,) * 3, dtype=np.uint8, zarr_format=2)
        stored[:] = pred_sem
        sem = timed(lambda: semantic_counts(stored, truth, 4, block=128), a.repeat)
    inst = timed(lambda: score_instances(pred_ids, truth == 14, (8.0, 8.0, 8.0)), a.repeat)
    score = score_instances(pred_ids, truth == 14, (8.0, 8.0, 8.0))
    r = {"size": a.size, "semantic_s_per_class": sem, "instance_s_per_class": inst,
         "instance_tp_fp_fn": [score.tp, score.fp, score.fn] if hasattr(score, "tp") else None}
    print(f"{a.size}^3 crop: semantic {sem:.2f} s per class, instance {inst:.2f} s per class "
          f"(best of {a.repeat})")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
