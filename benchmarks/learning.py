"""Does training learn? A model's validation Dice against trivial baselines, per class.

Reads results/{model}/train/metrics.csv (the best epoch's per-class Dice) and the inventory;
computes on the same validation crops (a) all background, (b) the best intensity interval per
class fitted on the training crops. Prints the table for the large classes (nuc, mito_lum, ecs)
and all classes' mean.

    snakemake --cores 2 results/segresnet/train/summary.json
    python benchmarks/learning.py --model segresnet [--config config/config.yaml]

The classes (names, label values) are the run's configured ontology (--config; default: the
embedded default's 14 classes).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellmapseg.classes import Ontology
from cellmapseg.config import from_dict, load
from cellmapseg.data.inventory import read_inventory
from cellmapseg.data.loading import load_volume
from cellmapseg.data.volumes import Volume
from cellmapseg.evaluate.metrics import mean_dice

LARGE = ("ecs", "mito_lum", "nuc")

# --- the trivial segmentations (they serve this benchmark only) ---------------------------

BINS = np.linspace(-4.0, 4.0, 65)  # z-scored intensity bins


def _zscore(volume: Volume) -> np.ndarray:
    return (volume.image.astype(np.float32) - volume.mean) / max(volume.std, 1e-6)


def fit_intensity_intervals(volumes: Sequence[Volume], ontology: Ontology
                            ) -> dict[int, tuple[float, float]]:
    """Per channel, the z-scored intensity interval whose voxels best match the class (max Dice)
    over the training volumes where the channel is annotated: the best a threshold can do."""
    intervals = {}
    for c, value in enumerate(ontology.labels):
        inside = np.zeros(len(BINS) - 1)
        total = np.zeros(len(BINS) - 1)
        for v in volumes:
            if not v.annotation_mask[c]:
                continue
            z = _zscore(v).ravel()
            total += np.histogram(z, BINS)[0]
            inside += np.histogram(z[v.label.ravel() == value], BINS)[0]
        if inside.sum() == 0:
            continue
        intervals[c] = _best_interval(inside, total)
    return intervals


def _best_interval(inside: np.ndarray, total: np.ndarray) -> tuple[float, float]:
    ci, ct = np.concatenate([[0], np.cumsum(inside)]), np.concatenate([[0], np.cumsum(total)])
    lo, hi = np.triu_indices(len(inside) + 1, k=1)
    tp = ci[hi] - ci[lo]
    predicted = ct[hi] - ct[lo]
    dice = 2 * tp / (predicted + inside.sum())
    best = int(np.argmax(dice))
    return float(BINS[lo[best]]), float(BINS[hi[best]])


def baseline_records(volumes: Sequence[Volume], intervals: dict[int, tuple[float, float]] | None,
                     ontology: Ontology) -> list[dict]:
    """tp/fp/fn per annotated (crop, channel): all background when `intervals` is None, else the
    intensity-interval prediction."""
    records = []
    for v in volumes:
        z = None if intervals is None else _zscore(v)
        for c in np.flatnonzero(v.annotation_mask):
            truth = v.label == ontology.labels[c]
            if intervals is None or int(c) not in intervals:
                pred = np.zeros_like(truth)
            else:
                lo, hi = intervals[int(c)]
                pred = (z >= lo) & (z < hi)
            tp = int((pred & truth).sum())
            records.append({"crop": v.name, "channel": int(c), "tp": tp,
                            "fp": int(pred.sum()) - tp, "fn": int(truth.sum()) - tp})
    return records


# --- the benchmark ------------------------------------------------------------------------



def run(model: str, results: Path, ontology: Ontology) -> pd.DataFrame:
    inv = read_inventory(results / "data/inventory.csv")
    train = [load_volume(r) for r in inv[inv.split == "training"].to_dict("records")]
    val = [load_volume(r) for r in inv[inv.split == "validation"].to_dict("records")]
    names = list(ontology.atomic)
    bg_mean, bg = mean_dice(baseline_records(val, None, ontology), names)
    th_mean, th = mean_dice(baseline_records(val, fit_intensity_intervals(train, ontology),
                                             ontology), names)
    metrics = pd.read_csv(results / model / "train/metrics.csv")
    best = metrics.loc[metrics["val_dice_mean"].idxmax()]
    rows = [{"class": n, "all_background": bg[n], "intensity_interval": th[n],
             model: best[f"val_dice_{n}"]} for n in names]
    rows.append({"class": "mean (annotated pairs)", "all_background": bg_mean,
                 "intensity_interval": th_mean, model: best["val_dice_mean"]})
    table = pd.DataFrame(rows).set_index("class")
    table.attrs["best_epoch"] = int(best["epoch"])
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="segresnet")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--json", type=Path)
    p.add_argument("--config", type=Path, help="the run's config (its classes section)")
    a = p.parse_args()
    ontology = (load(a.config) if a.config else from_dict({})).classes
    table = run(a.model, a.results, ontology)
    print(f"validation Dice, {a.model} best epoch {table.attrs['best_epoch']}:")
    print(table.round(3).to_string())
    large = table.loc[list(LARGE)]
    beats = (large[a.model] > large[["all_background", "intensity_interval"]].max(axis=1)).all()
    print(f"large classes {', '.join(LARGE)} above both baselines: {beats}")
    if a.json:
        a.json.write_text(json.dumps(table.reset_index().to_dict("records"), indent=2) + "\n")


if __name__ == "__main__":
    main()
