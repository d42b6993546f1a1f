"""Does training learn? A model's validation Dice against trivial baselines, per class.

Reads results/{model}/train/metrics.csv (the best epoch's per-class Dice) and the inventory;
computes on the same validation crops (a) all background, (b) the best intensity interval per
class fitted on the training crops. Prints the table for the large classes (nuc, mito_lum, ecs)
and all classes' mean.

    snakemake --cores 2 results/segresnet/train/summary.json
    python benchmarks/learning.py --model segresnet
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from cellmapseg.baselines import baseline_records, fit_intensity_intervals
from cellmapseg.classes import CLASS_NAMES
from cellmapseg.data.loading import load_volume
from cellmapseg.probe.memory import read_inventory
from cellmapseg.scoring import mean_dice

LARGE = ("ecs", "mito_lum", "nuc")


def run(model: str, results: Path) -> pd.DataFrame:
    inv = read_inventory(results / "data/inventory.csv")
    train = [load_volume(r) for r in inv[inv.split == "training"].to_dict("records")]
    val = [load_volume(r) for r in inv[inv.split == "validation"].to_dict("records")]
    names = list(CLASS_NAMES)
    bg_mean, bg = mean_dice(baseline_records(val, None), names)
    th_mean, th = mean_dice(baseline_records(val, fit_intensity_intervals(train)), names)
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
    a = p.parse_args()
    table = run(a.model, a.results)
    print(f"validation Dice, {a.model} best epoch {table.attrs['best_epoch']}:")
    print(table.round(3).to_string())
    large = table.loc[list(LARGE)]
    beats = (large[a.model] > large[["all_background", "intensity_interval"]].max(axis=1)).all()
    print(f"large classes {', '.join(LARGE)} above both baselines: {beats}")
    if a.json:
        a.json.write_text(json.dumps(table.reset_index().to_dict("records"), indent=2) + "\n")


if __name__ == "__main__":
    main()
