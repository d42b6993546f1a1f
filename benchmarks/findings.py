"""The field's findings on the embedded default: validation Dice of one model trained with and
without the padding mask and the EMA of the weights, all scored by the same yardstick.

Each variant is trained by the package's train stage (torchrun, the embedded default's sizes)
from the same inventory and caching decision; the best checkpoint is then scored on the
validation crops twice, with black padding left out (the honest count) and without (the spec's),
so the columns compare models, not scoring rules.

    snakemake --cores 2 results/probe/caching_strategy.json     # inventory + caching choice
    python benchmarks/findings.py --model segresnet --ema 0.99 --out bench/findings
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from cellmapseg import stages
from cellmapseg.config import load
from cellmapseg.data.caching import from_selection, open_source
from cellmapseg.data.inventory import read_inventory
from cellmapseg.data.padding import with_padding
from cellmapseg.evaluate.metrics import mean_dice
from cellmapseg.predict.crops import load_model
from cellmapseg.probe.select import read_selection
from cellmapseg.train.validation import score_volumes


def variants(ema: float) -> dict[str, dict]:
    return {
        "spec (no mask, no EMA)": {"padding_mask": "none", "ema_decay": None},
        "padding mask": {"padding_mask": "border", "ema_decay": None},
        f"EMA {ema:g}": {"padding_mask": "none", "ema_decay": ema},
        f"padding mask + EMA {ema:g}": {"padding_mask": "border", "ema_decay": ema},
    }


def validation_dice(cfg, model: str, checkpoint: Path, inventory: pd.DataFrame,
                    selection: dict, mode: str) -> float:
    """Mean validation Dice of the checkpoint (the training's own validation), padding scored
    under `mode`."""
    rows = inventory[inventory["split"] == "validation"]
    caching = from_selection(cfg.caching, selection)
    source = with_padding(open_source(caching.strategy, rows, caching, store_rows=inventory),
                          rows, mode)
    m = cfg.model(model)
    net, _ = load_model(m, cfg.classes, checkpoint, torch.device("cpu"))
    with torch.no_grad():
        records = score_volumes(net.predict, source, range(len(source)), m.roi_size,
                                cfg.inference, torch.device("cpu"), cfg.classes.labels)
    return mean_dice(records, list(cfg.classes.atomic))[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--model", default="segresnet")
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--inventory", default="results/data/inventory.csv")
    p.add_argument("--caching", default="results/probe/caching_strategy.json")
    p.add_argument("--out", default="bench/findings")
    args = p.parse_args()
    out = Path(args.out)
    inventory = read_inventory(args.inventory)
    selection = read_selection(args.caching)
    padded = inventory.loc[inventory["padding_voxels"] > 0, ["crop", "split", "padding_voxels"]]
    print("crops with black border padding:\n" + padded.to_string(index=False))
    rows = []
    for name, change in variants(args.ema).items():
        folder = out / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        override = folder / "override.yaml"
        folder.mkdir(parents=True, exist_ok=True)
        override.write_text(yaml.safe_dump({
            "data": {"padding_mask": change["padding_mask"]},
            "models": {args.model: {"ema_decay": change["ema_decay"]}}}))
        cfg = load(args.config, override)
        start = time.perf_counter()
        stages.train(cfg, args.model, Path(args.inventory), Path(args.caching), folder / "train")
        seconds = time.perf_counter() - start
        summary = json.loads((folder / "train" / "summary.json").read_text())
        best = folder / "train" / summary["checkpoint"]
        rows.append({
            "variant": name, "best_epoch": summary["best_epoch"],
            "val_dice_own_rule": summary["best_val_dice"],
            "val_dice_padding_left_out": validation_dice(cfg, args.model, best, inventory,
                                                         selection, "border"),
            "val_dice_padding_scored": validation_dice(cfg, args.model, best, inventory,
                                                       selection, "none"),
            "train_s": round(seconds, 1)})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    table.to_csv(out / "findings.csv", index=False)


if __name__ == "__main__":
    main()
