"""Other ontologies end to end: a 3-class one through train -> predict -> evaluate, and the
challenge's whole ontology (config/classes/challenge.yaml) through the DAG on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from conftest import tiny_model
from test_ontology import THREE

from cellmapseg import stages
from cellmapseg.config import from_dict, load
from cellmapseg.data.inventory import write_inventory
from cellmapseg.synthetic.generate import generate

ROOT = Path(__file__).resolve().parents[1]
CHALLENGE = ROOT / "config" / "classes" / "challenge.yaml"
pytestmark = pytest.mark.slow


def _train(root: Path, raw: dict) -> None:
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "cellmapseg", "-c", str(root / "config.yaml"), "train", "--model",
         "tiny", "--inventory", str(root / "inventory.csv"), "--caching",
         str(root / "caching.json"), "--out", str(root / "tiny/train")],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_three_class_ontology_trains_predicts_and_scores(tmp_path):
    syn = {"n_train": 3, "n_val": 2, "shape": [24, 24, 24], "large_shape": [28, 28, 28],
           "small_shape": [12, 24, 24], "seed": 5}
    raw = {"classes": THREE, "data": {"synthetic": syn}}
    cfg0 = from_dict(raw)
    raw["data"]["datalist"] = str(generate(cfg0.data.synthetic, (8.0,) * 3, tmp_path / "data",
                                           cfg0.classes))
    write_inventory(from_dict(raw), tmp_path / "inventory.csv")
    (tmp_path / "caching.json").write_text(json.dumps(
        {"strategy": "A", "store_dir": str(tmp_path), "disk_dir": str(tmp_path),
         "d_threshold_mb": 1}))
    raw.update(train={"num_workers": 0}, inference={"block_size": 12},
               models={"tiny": tiny_model(ds_weights=[1.0], train_sub_epochs=1,
                                          class_weights={"mito_lum": 2.0})})
    _train(tmp_path, raw)
    cfg = load(tmp_path / "config.yaml")
    metrics = pd.read_csv(tmp_path / "tiny/train/metrics.csv")
    assert [c for c in metrics.columns if c.startswith("val_dice_")] == [
        "val_dice_mean", "val_dice_ecs", "val_dice_mito_mem", "val_dice_mito_lum"]

    out = tmp_path / "tiny/predictions/predictions.zarr"
    stages.predict(cfg, "tiny", tmp_path / "tiny/train/summary.json", tmp_path / "inventory.csv",
                   out, out.parent / "manifest.json")
    store = zarr.open_group(str(out), mode="r")
    for crop in store.group_keys():
        group = store[crop]
        assert sorted(group.array_keys()) == ["ecs", "mito", "mito_lum", "mito_mem"]
        union = (np.asarray(group["mito_mem"][:]) > 0) | (np.asarray(group["mito_lum"][:]) > 0)
        assert np.array_equal(np.asarray(group["mito"][:]) > 0, union)  # composed, not trained
        assert group["mito"].dtype == np.uint32

    stages.evaluate(cfg, out, tmp_path / "inventory.csv", tmp_path / "tiny/eval.csv",
                    tmp_path / "tiny/eval_summary.json")
    table = pd.read_csv(tmp_path / "tiny/eval.csv", keep_default_na=False)
    inv = pd.read_csv(tmp_path / "inventory.csv", keep_default_na=False).set_index("crop")
    for crop, classes in table.groupby("crop")["class"]:
        channels = [int(c) for c in str(inv.loc[crop, "annotated_classes"]).split(",") if c]
        assert list(classes) == list(cfg.classes.annotated(channels))
    kinds = dict(zip(table["class"], table["kind"], strict=False))
    assert kinds.get("mito", "instance") == "instance" and kinds.get("ecs") == "semantic"
    summary = json.loads((tmp_path / "tiny/eval_summary.json").read_text())
    assert summary["ontology"]["atomic"] == ["ecs", "mito_mem", "mito_lum"]
    assert summary["leaderboard"]["not_predicted"] == ["cell"]
    assert summary["leaderboard"]["scores"]["cell"] == 0.0


def _challenge_override(path: Path) -> Path:
    """The embedded default's three models and data shrunk to seconds of work each."""
    quick = {"epochs": 1, "eval_epochs": 1, "train_sub_epochs": 1}
    raw = {
        "data": {"synthetic": {"n_train": 4, "n_val": 2, "shape": [32, 32, 32],
                               "large_shape": [36, 36, 36], "small_shape": [20, 32, 32]}},
        "caching": {"probe_crops": 2, "probe_patches": 1},
        "train": {"num_workers": 0},
        "models": {"segresnet": {**quick, "num_samples": 2},
                   "swinunetr": quick, "flexunet_resnet34": {**quick, "num_samples": 2}},
        # the rows derived from the models are the embedded DAG's tests', not the ontology's
        "variants": {"segresnet_tta": {"enabled": False}, "segresnet_tuned": {"enabled": False}},
        "ensembles": {"ensemble_mean": {"enabled": False},
                      "ensemble_per_class": {"enabled": False}},
        "submission": {"model": "segresnet"},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


# Classes no training crop of the challenge's manifest annotates (frequency 0 there), drawn here
# too so that the nucleus' and chromatin's members are among the annotated ones.
ALSO_DRAWN = ("nhchrom", "nechrom", "nucleo", "ribo")


def _challenge_35(path: Path) -> tuple[Path, dict]:
    """challenge.yaml with 35 of its 53 atomic classes annotated in the synthetic crops: the
    31 the real training crops annotate and ALSO_DRAWN."""
    raw = yaml.safe_load(CHALLENGE.read_text())
    for entry in raw["classes"]["atomic"]:
        if entry["name"] in ALSO_DRAWN:
            entry["frequency"] = 0.5
    path.write_text(yaml.safe_dump(raw))
    return path, raw["classes"]


def test_the_challenge_ontology_runs_the_dag_on_a_35_class_tiny_dataset(tmp_path):
    from slurm_cluster import run_local

    classes, challenge = _challenge_35(tmp_path / "challenge35.yaml")
    assert sum(c["frequency"] > 0 for c in challenge["atomic"]) == 35
    configs = (ROOT / "config" / "config.yaml", _challenge_override(tmp_path / "quick.yaml"),
               classes)
    proc = run_local(tmp_path, "all", configfiles=configs, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = tmp_path / "results"
    datalist = json.loads((results / "data/zarr/datalist.json").read_text())  # converted
    atomic = [c["name"] for c in challenge["atomic"]]
    assert [c["name"] for c in datalist["class_names"]] == atomic
    painted = {int(c) for split in ("training", "validation") for e in datalist[split]
               for c in e["annotated_classes"].split(",") if c}
    frequent = {i for i, c in enumerate(challenge["atomic"]) if c["frequency"] > 0}
    assert painted == frequent  # every class the real crops annotate, and no other
    table = pd.read_csv(results / "segresnet/eval.csv", keep_default_na=False)
    groups = {g["name"] for g in challenge["groups"]}
    assert groups & set(table["class"]), "no group class was scored"
    instance = set(challenge["instance"])
    assert set(table.loc[table["class"].isin(instance), "kind"]) <= {"instance"}
    summary = json.loads((results / "segresnet/eval_summary.json").read_text())
    board = summary["leaderboard"]
    assert board["n_tested"] == 48 and board["covered"] == 48 and not board["not_predicted"]
    comparison = pd.read_csv(results / "comparison.csv")
    assert len(comparison) == 3 and set(comparison["status"]) == {"ok"}
    assert "leaderboard_overall" in comparison.columns
