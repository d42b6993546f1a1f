"""The predict and evaluate stages end to end on a tiny trained model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from conftest import ONTOLOGY, tiny_model

from cellmapseg import stages
from cellmapseg.config import from_dict, load, to_dict
from cellmapseg.data.inventory import read_inventory, validation_crop_ids, write_inventory
from cellmapseg.data.store import ensure_store
from cellmapseg.errors import InputError
from cellmapseg.layout import Results
from cellmapseg.synthetic.generate import generate

MODEL = tiny_model(ds_weights=[1.0], train_sub_epochs=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    syn = {"n_train": 3, "n_val": 2, "shape": [28, 28, 28], "large_shape": [32, 32, 32],
           "small_shape": [12, 28, 28], "seed": 8}
    raw = {"data": {"synthetic": syn}}
    raw["data"]["datalist"] = str(generate(from_dict(raw).data.synthetic, (8.0,) * 3,
                                           root / "data", ONTOLOGY))
    write_inventory(from_dict(raw), root / "inventory.csv")
    (root / "caching.json").write_text(json.dumps(
        {"strategy": "A", "store_dir": str(root), "disk_dir": str(root), "d_threshold_mb": 1}))
    cfg_raw = {**raw, "train": {"num_workers": 0}, "inference": {"block_size": 12},
               "models": {"tiny": MODEL}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg_raw))
    proc = subprocess.run(
        [sys.executable, "-m", "cellmapseg", "-c", str(root / "config.yaml"), "train", "--model",
         "tiny", "--inventory", str(root / "inventory.csv"), "--caching",
         str(root / "caching.json"), "--out", str(root / "tiny/train")],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, load(root / "config.yaml")


def predict(cfg, model, summary, inventory, out, crops=None, caching=None):
    """The predict stage with the workflow's manifest beside the store."""
    stages.predict(cfg, model, summary, inventory, out, out.parent / "manifest.json", crops,
                   caching)


def test_predictions_follow_the_challenge_layout(trained):
    root, cfg = trained
    out = root / "tiny/predictions/predictions.zarr"
    predict(cfg, "tiny", root / "tiny/train/summary.json", root / "inventory.csv", out)
    inv = pd.read_csv(root / "inventory.csv", keep_default_na=False)
    val = inv[inv.split == "validation"]
    store = zarr.open_group(str(out), mode="r")
    assert sorted(store.group_keys()) == sorted(val["crop_id"])
    for _, row in val.iterrows():
        group = store[row["crop_id"]]
        # one array per class: the 14 atomic ones and the groups mito, golgi, ves, endo
        assert len(ONTOLOGY.names) == 18
        assert sorted(group.array_keys()) == sorted(ONTOLOGY.names)
        for name in ONTOLOGY.names:
            arr = group[name]
            assert arr.shape == (row["d"], row["h"], row["w"])
            instance = name in ("nuc", "mito", "ves", "endo")
            assert arr.dtype == (np.uint32 if instance else np.uint8)
            assert arr.attrs["voxel_size"] == [8.0, 8.0, 8.0]
            assert arr.attrs["translation"] == [0.0, 0.0, 0.0]
        for name in ("nuc", "mito", "ves", "endo"):
            ids = np.asarray(group[name][:])
            assert set(np.unique(ids)) == set(range(ids.max() + 1))  # consecutive instance ids
        for name, members in ONTOLOGY.groups:  # a group is the union of its members
            union = np.logical_or.reduce([np.asarray(group[m][:]) > 0 for m in members])
            np.testing.assert_array_equal(np.asarray(group[name][:]) > 0, union)
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert manifest["crops"] == list(val["crop_id"]) and manifest["epoch"] == 1
    assert not (out.parent / "predictions.zarr.tmp").exists()

    stages.evaluate(cfg, out, root / "inventory.csv", root / "tiny/eval.csv",
                    root / "tiny/eval_summary.json")
    table = pd.read_csv(root / "tiny/eval.csv")
    for crop, classes in table.groupby("crop")["class"]:
        annotated = inv.set_index("crop").loc[crop, "annotated_classes"]
        channels = {int(c) for c in annotated.split(",") if c}
        expected = {ONTOLOGY.atomic[c] for c in channels}
        # a group is scored where all its members are annotated, never elsewhere
        expected |= {g for g, members in ONTOLOGY.groups
                     if {ONTOLOGY.channel(m) for m in members} <= channels}
        assert set(classes) == expected  # unannotated classes are never scored
    assert "overall" in json.loads((root / "tiny/eval_summary.json").read_text())


def test_block_size_does_not_change_the_predictions(trained):
    root, cfg = trained
    inv = root / "inventory.csv"
    predict(cfg, "tiny", root / "tiny/train/summary.json", inv, root / "a/p.zarr")
    raw = {**to_dict(cfg), "inference": {**to_dict(cfg)["inference"], "block_size": 64}}
    predict(from_dict(raw), "tiny", root / "tiny/train/summary.json", inv, root / "b/p.zarr")
    a, b = zarr.open_group(str(root / "a/p.zarr")), zarr.open_group(str(root / "b/p.zarr"))
    for crop in a.group_keys():
        for name in ONTOLOGY.names:
            np.testing.assert_array_equal(a[crop][name][:], b[crop][name][:])


def test_missing_or_corrupt_checkpoint_fails_in_one_line(trained, tmp_path):
    root, cfg = trained
    summary = json.loads((root / "tiny/train/summary.json").read_text())
    fake = tmp_path / "train"
    fake.mkdir()
    (fake / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(InputError, match="checkpoint .*best.pt: file not found"):
        predict(cfg, "tiny", fake / "summary.json", root / "inventory.csv", tmp_path / "p.zarr")
    (fake / "checkpoints").mkdir()
    (fake / "checkpoints/best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="truncated or corrupt"):
        predict(cfg, "tiny", fake / "summary.json", root / "inventory.csv", tmp_path / "p.zarr")
    assert not (tmp_path / "p.zarr").exists()


def test_unknown_crop_is_named(trained, tmp_path):
    root, cfg = trained
    with pytest.raises(InputError, match="crops not in the inventory: crop999"):
        predict(cfg, "tiny", root / "tiny/train/summary.json", root / "inventory.csv",
                tmp_path / "p.zarr", crops=["crop999"])


def test_a_gpu_config_without_a_cuda_device_stops_predict_in_one_line(trained, tmp_path,
                                                                      monkeypatch):
    root, cfg = trained
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    gpu = from_dict({**to_dict(cfg), "train": {**to_dict(cfg)["train"], "gpus": 1}})
    with pytest.raises(InputError, match="'train.gpus' = 1 .* sees no CUDA device"):
        predict(gpu, "tiny", root / "tiny/train/summary.json", root / "inventory.csv",
                tmp_path / "p.zarr")
    assert not (tmp_path / "p.zarr").exists() and not (tmp_path / "manifest.json").exists()


def test_images_the_training_store_holds_are_read_there_with_the_same_result(trained, tmp_path):
    root, cfg = trained
    inv = read_inventory(root / "inventory.csv")
    selection = {"strategy": "B", "store_dir": str(tmp_path / "shm"),
                 "disk_dir": str(tmp_path / "disk"), "d_threshold_mb": 500}
    (tmp_path / "caching.json").write_text(json.dumps(selection))
    summary = root / "tiny/train/summary.json"
    predict(cfg, "tiny", summary, root / "inventory.csv", tmp_path / "a/p.zarr",
            caching=tmp_path / "caching.json")  # no store on this node yet: the NIfTI files
    ensure_store(tmp_path / "shm", inv.to_dict("records"))
    predict(cfg, "tiny", summary, root / "inventory.csv", tmp_path / "b/p.zarr",
            caching=tmp_path / "caching.json")
    sources = [json.loads((tmp_path / f"{x}/manifest.json").read_text())["image_sources"]
               for x in "ab"]
    assert set(sources[0].values()) == {"crop file"}
    assert set(sources[1].values()) == {"training store"}
    a, b = zarr.open_group(str(tmp_path / "a/p.zarr")), zarr.open_group(str(tmp_path / "b/p.zarr"))
    for crop in a.group_keys():
        for name in ONTOLOGY.names:
            np.testing.assert_array_equal(a[crop][name][:], b[crop][name][:])


def test_crops_predicted_and_scored_apart_gather_into_the_same_files(trained, tmp_path):
    """The workflow's per-crop jobs (predict_crop, evaluate_crop, then the two gathers) give
    the store, manifest, eval.csv and eval_summary.json that one run over every crop gives."""
    root, cfg = trained
    inv, summary = root / "inventory.csv", root / "tiny/train/summary.json"
    whole = tmp_path / "whole/predictions.zarr"
    predict(cfg, "tiny", summary, inv, whole)
    stages.evaluate(cfg, whole, inv, tmp_path / "whole/eval.csv",
                    tmp_path / "whole/eval_summary.json")
    crops = validation_crop_ids(inv)
    assert len(crops) >= 2
    R = Results(tmp_path / "apart")
    for crop in crops:
        stages.predict(cfg, "tiny", summary, inv, R.crop_predictions("tiny", crop),
                       R.crop_manifest("tiny", crop), [crop])
        stages.evaluate_crop(cfg, R.crop_predictions("tiny", crop), inv, crop,
                             R.crop_eval("tiny", crop))
    stages.gather_predictions([R.crop_predictions("tiny", c) for c in crops],
                              [R.crop_manifest("tiny", c) for c in crops],
                              R.predictions("tiny"), R.manifest("tiny"))
    stages.gather_scores(cfg, inv, [R.crop_eval("tiny", c) for c in crops], R.eval_csv("tiny"),
                         R.eval_summary("tiny"))

    assert R.eval_csv("tiny").read_bytes() == (tmp_path / "whole/eval.csv").read_bytes()
    assert json.loads(R.eval_summary("tiny").read_text()) == \
        json.loads((tmp_path / "whole/eval_summary.json").read_text())
    apart, at_once = (json.loads(p.read_text()) for p in (R.manifest("tiny"),
                                                          whole.parent / "manifest.json"))
    # wall seconds per crop differ from run to run; every crop has them
    assert set(apart.pop("seconds")) == set(at_once.pop("seconds")) == set(crops)
    assert apart == at_once
    a, b = zarr.open_group(str(whole), mode="r"), zarr.open_group(str(R.predictions("tiny")),
                                                                mode="r")
    assert sorted(b.group_keys()) == sorted(crops)
    assert {k: v for k, v in b.attrs.items() if k != "seconds"} == \
        {k: v for k, v in a.attrs.items() if k != "seconds"}
    for crop in crops:
        assert (R.predictions("tiny") / crop).is_symlink()  # linked, not copied
        for name in ONTOLOGY.names:
            np.testing.assert_array_equal(a[crop][name][:], b[crop][name][:])
    # The store still reads after results/ moves (the links are relative).
    moved = tmp_path / "moved"
    (tmp_path / "apart").rename(moved)
    stages.evaluate(cfg, Results(moved).predictions("tiny"), inv, tmp_path / "m.csv",
                    tmp_path / "m.json")
    assert (tmp_path / "m.csv").read_bytes() == (tmp_path / "whole/eval.csv").read_bytes()


def test_a_crop_predicted_with_another_checkpoint_stops_the_gather(trained, tmp_path):
    root, cfg = trained
    inv, summary = root / "inventory.csv", root / "tiny/train/summary.json"
    R = Results(tmp_path)
    crops = validation_crop_ids(inv)[:2]
    for crop in crops:
        stages.predict(cfg, "tiny", summary, inv, R.crop_predictions("tiny", crop),
                       R.crop_manifest("tiny", crop), [crop])
    other = json.loads(R.crop_manifest("tiny", crops[1]).read_text())
    R.crop_manifest("tiny", crops[1]).write_text(json.dumps({**other, "step": other["step"] + 1}))
    with pytest.raises(InputError, match=f"{crops[1]}.json: 'step' is .* predict the crops again"):
        stages.gather_predictions([R.crop_predictions("tiny", c) for c in crops],
                                  [R.crop_manifest("tiny", c) for c in crops],
                                  R.predictions("tiny"), R.manifest("tiny"))
    assert not R.predictions("tiny").exists() and not R.manifest("tiny").exists()


def test_a_missing_crop_table_stops_the_score_gather_in_one_line(trained, tmp_path):
    root, cfg = trained
    inv = root / "inventory.csv"
    crops = validation_crop_ids(inv)
    R = Results(tmp_path)
    with pytest.raises(InputError, match=f"{crops[0]}.csv: file not found"):
        stages.gather_scores(cfg, inv, [R.crop_eval("tiny", c) for c in crops],
                             R.eval_csv("tiny"), R.eval_summary("tiny"))
    assert not R.eval_csv("tiny").exists() and not R.eval_summary("tiny").exists()


def test_an_ensemble_of_a_model_with_itself_predicts_exactly_that_model(trained, tmp_path):
    root, cfg = trained
    raw = {**to_dict(cfg), "ensembles": {"self": {"method": "mean", "members": ["tiny", "tiny"],
                                                  "thresholds": "fixed"}}}
    cfg = from_dict(raw)
    inv, summary = root / "inventory.csv", root / "tiny/train/summary.json"
    R = Results(tmp_path)
    crops = validation_crop_ids(inv)
    for crop in crops:
        stages.predict(cfg, "tiny", summary, inv, R.crop_predictions("tiny", crop),
                       R.crop_manifest("tiny", crop), [crop],
                       kept=R.crop_probabilities("tiny", crop))
    stages.choose(cfg, "self", inv, {}, R.choices("self"))
    for crop in crops:
        stages.derive(cfg, "self", R.choices("self"), [R.crop_probabilities("tiny", crop)],
                      inv, crop, R.crop_predictions("self", crop), R.crop_manifest("self", crop))
        model = zarr.open_group(str(R.crop_predictions("tiny", crop)), mode="r")[crop]
        ensemble = zarr.open_group(str(R.crop_predictions("self", crop)), mode="r")[crop]
        for name in ONTOLOGY.names:  # atomic, groups and instance ids alike
            np.testing.assert_array_equal(ensemble[name][:], model[name][:])
            assert ensemble[name].attrs.asdict() == model[name].attrs.asdict()
        kept = zarr.open_group(str(R.crop_probabilities("tiny", crop)), mode="r")[crop]
        assert kept["ecs"].dtype == np.uint8 and 0 < kept["ecs"][:].max() <= 255
        assert json.loads(R.crop_manifest("tiny", crop).read_text())["seconds"][crop] > 0
