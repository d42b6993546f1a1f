"""The class ontology from configuration: validation, groups composed at prediction, group
annotation, label values, and the leaderboard's view of a score."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from conftest import write_nifti

from cellmapseg.config import from_dict
from cellmapseg.data import predictions
from cellmapseg.data.inventory import write_inventory
from cellmapseg.errors import ConfigError, InputError
from cellmapseg.evaluate.aggregate import leaderboard, pool_classes, summarise
from cellmapseg.evaluate.score import score_table
from cellmapseg.predict.threshold import class_masks
from cellmapseg.synthetic.generate import generate

CHALLENGE = Path(__file__).resolve().parents[1] / "config" / "classes" / "challenge.yaml"

# Three atomic classes with challenge-style (non-contiguous) label values and one group.
THREE = {
    "atomic": [{"name": "ecs", "label": 1}, {"name": "mito_mem", "label": 3},
               {"name": "mito_lum", "label": 4}],
    "groups": [{"name": "mito", "members": ["mito_mem", "mito_lum"]}],
    "instance": ["mito", "cell"],
    "tested": ["ecs", "mito_mem", "mito", "cell"],
}


def three() -> dict:
    return {"classes": {k: list(v) for k, v in THREE.items()}}


def test_default_ontology_is_the_spec_14_with_four_groups_and_four_instance_classes():
    o = from_dict({}).classes
    assert o.num_channels == 14 and o.labels == tuple(range(1, 15))
    assert o.group_names == ("mito", "golgi", "ves", "endo")
    assert [n for n in o.names if o.is_instance(n)] == ["nuc", "mito", "ves", "endo"]
    assert len(o.tested) == 48


def test_each_ontology_problem_is_one_line_naming_its_key():
    bad = {"classes": {
        "atomic": [{"name": "a", "label": 1}, {"name": "b", "label": 1},
                   {"name": "a", "label": 2}],
        "groups": [{"name": "g", "members": ["a", "zz"]},
                   {"name": "h", "members": ["g", "b"]}],
        "instance": ["nope"], "tested": ["a", "a"]}}
    with pytest.raises(ConfigError) as exc:
        from_dict(bad)
    lines = str(exc.value).splitlines()
    expected = [
        "classes.atomic[1].label' = 1 is the label value of a already",
        "classes.atomic[2].name': class 'a' is defined twice",
        "classes.groups[0].members[1]': unknown atomic class 'zz'",
        "classes.groups[1].members[0]': 'g' is a group",
        "classes.instance[0]': 'nope' is neither a class",
        "classes.tested' lists 'a' more than once",
    ]
    assert len(lines) == len(expected), lines
    for want in expected:
        assert sum(want in line for line in lines) == 1, (want, lines)


def test_per_class_lists_follow_the_number_of_atomic_classes():
    with pytest.raises(ConfigError, match=r"'inference.threshold' has 14 values; classes.atomic "
                                          r"has 3 classes"):
        from_dict({**three(), "inference": {"threshold": [0.5] * 14}})
    cfg = from_dict({**three(), "inference": {"threshold": [0.4, 0.5, 0.6]}})
    assert cfg.inference.thresholds(3) == [0.4, 0.5, 0.6]


def test_group_masks_are_the_union_of_their_thresholded_members():
    o = from_dict({}).classes
    rng = np.random.default_rng(0)
    binary = rng.random((14, 5, 6, 7)) > 0.7
    masks = dict(class_masks(binary, o))
    assert list(masks) == list(o.names)
    for name in o.names:
        want = np.zeros_like(binary[0])
        for c in o.members(name):
            want |= binary[c]
        assert np.array_equal(masks[name], want), name
    assert np.array_equal(masks["mito"], binary[2] | binary[3] | binary[4])


def test_a_group_counts_as_annotated_only_where_all_its_members_are():
    o = from_dict({}).classes
    mito = [o.channel(n) for n in ("mito_mem", "mito_lum", "mito_ribo")]
    assert "mito" in o.annotated(mito)
    assert "mito" not in o.annotated(mito[:2])
    assert o.annotated(mito[:2]) == ("mito_mem", "mito_lum")


def _crop(tmp_path, annotated: str, label: np.ndarray, pred: dict[str, np.ndarray], o):
    """One validation crop: its label NIfTI, an inventory frame and a predictions store."""
    path = write_nifti(tmp_path / "labels" / "ds_crop1.nii.gz", label)
    d, h, w = label.shape
    inv = pd.DataFrame([{"crop": "ds_crop1", "crop_id": "crop1", "split": "validation",
                         "image": str(path), "label": str(path), "d": d, "h": h, "w": w,
                         "annotated_classes": annotated}])
    store = tmp_path / "predictions.zarr"
    with predictions.writing(store) as root:
        arrays = predictions.create_crop(root, "crop1", label.shape, (8.0,) * 3, o)
        for name, values in pred.items():
            arrays[name][...] = values
    return inv, store


def test_a_group_with_an_unannotated_member_is_not_scored_in_that_crop(tmp_path):
    o = from_dict(three()).classes
    label = np.zeros((8, 8, 8), np.uint8)
    label[:, :, :3], label[2:5, 2:5, 4:7], label[3, 3, 5] = 1, 3, 4  # ecs; a mito
    pred = {"mito": (label >= 3).astype(np.uint32)}
    inv, store = _crop(tmp_path / "two", "0,1", label, pred, o)
    table, _ = score_table(store, inv, (8.0,) * 3, tmp_path / "two", o)
    assert list(table["class"]) == ["ecs", "mito_mem"]  # mito_lum unannotated: no mito row
    inv, store = _crop(tmp_path / "all", "0,1,2", label, pred, o)
    table, _ = score_table(store, inv, (8.0,) * 3, tmp_path / "all", o)
    assert list(table["class"]) == ["ecs", "mito_mem", "mito_lum", "mito"]
    row = table.set_index("class").loc["mito"]
    # the group's truth is the union of its members' label values: one object, found exactly
    assert row["kind"] == "instance" and (row["tp"], row["fp"], row["fn"]) == (1, 0, 0)
    assert row["n_true"] == 1


def test_label_values_outside_the_ontology_are_rejected_naming_crop_and_value(tmp_path):
    raw = {**three(), "data": {"synthetic": {
        "n_train": 3, "n_val": 1, "shape": [16, 16, 16], "large_shape": [18, 18, 18],
        "small_shape": [10, 16, 16]}}}
    cfg0 = from_dict(raw)
    raw["data"]["datalist"] = str(generate(cfg0.data.synthetic, (8.0,) * 3, tmp_path / "d",
                                           cfg0.classes))
    labels = sorted((tmp_path / "d" / "labels").glob("*.nii.gz"))
    values = {int(v) for f in labels for v in np.unique(np.asanyarray(nib.load(f).dataobj))}
    assert values <= {0, 1, 3, 4} and values & {3, 4}  # the configured values, not 1..3
    bad = labels[0]
    array = np.asanyarray(nib.load(bad).dataobj).copy()
    array.flat[:2] = (2, 9)  # 2: a gap between configured values; 9: above them all
    write_nifti(bad, array)
    with pytest.raises(InputError) as exc:
        write_inventory(from_dict(raw), tmp_path / "inventory.csv")
    crop = bad.name.removesuffix(".nii.gz")
    line, = [ln for ln in str(exc.value).splitlines() if crop in ln]
    assert "values 2, 9 are not label values" in line and "0 and 1, 3..4" in line
    assert not (tmp_path / "inventory.csv").exists()


def _rows(entries: list[dict]) -> pd.DataFrame:
    base = {"crop": "c", "crop_id": "c", "iou": np.nan, "dice": np.nan, "f1": np.nan,
            "mean_norm_hausdorff": np.nan, "combined": np.nan, "n_pred": 0, "n_true": 0,
            "guard": "", "hausdorff_norm_sum": np.nan, "n_hausdorff": pd.NA}
    return pd.DataFrame([{**base, **e} for e in entries])


def test_the_leaderboard_view_equals_a_hand_computation():
    o = from_dict({"classes": {**THREE, "tested": ["ecs", "mito_mem", "mito_lum", "mito",
                                                    "cell", "er"]}}).classes
    rows = _rows([
        {"class": "ecs", "kind": "semantic", "tp": 3, "fp": 1, "fn": 0},  # IoU 3/4
        {"class": "mito_mem", "kind": "semantic", "tp": 1, "fp": 0, "fn": 1},  # IoU 1/2
        {"class": "mito", "kind": "instance", "tp": 1, "fp": 1, "fn": 0,  # F1 2/3
         "hausdorff_norm_sum": 1.5, "n_hausdorff": 2},  # mean 0.75
    ])
    classes = pool_classes(rows, o)
    board = leaderboard(classes, o)
    # mito_lum predicted but never annotated: left out; cell and er not predicted: 0
    assert board["not_predicted"] == ["cell", "er"] and board["no_truth"] == ["mito_lum"]
    semantic = (0.75 + 0.5 + 0.0) / 3  # ecs, mito_mem, er
    instance = (math.sqrt(2 / 3 * 0.75) + 0.0) / 2  # mito, cell
    assert board["semantic_mean_iou"] == pytest.approx(semantic)
    assert board["instance_mean_combined"] == pytest.approx(instance)
    assert board["overall"] == pytest.approx(math.sqrt(semantic * instance))
    assert board["covered"] == 4 and board["n_tested"] == 6
    assert board["line"] == ("covers 4 of 6 tested classes (2 not predicted score 0); 1 "
                             "predicted but unannotated in these crops left out")
    summary = summarise(rows, ["c"], o)
    assert summary["leaderboard"] == board
    assert summary["overall"] == pytest.approx(math.sqrt(math.sqrt(0.5) * (0.75 + 0.5) / 2))


def test_predictions_hold_every_class_of_the_ontology(tmp_path):
    o = from_dict(three()).classes
    with predictions.writing(tmp_path / "p.zarr") as root:
        predictions.create_crop(root, "crop1", (4, 4, 4), (8.0,) * 3, o)
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")["crop1"]
    assert sorted(group.array_keys()) == sorted(["ecs", "mito_mem", "mito_lum", "mito"])
    assert group["mito"].dtype == np.uint32 and group["ecs"].dtype == np.uint8


def test_class_weights_by_name_follow_the_ontology_and_a_group_weighs_its_members():
    weights = {"mito_ribo": 4.0, "nuc": 2.0}
    model = {"network": {"type": "swinunetr"}, "class_weights": weights}
    spec = from_dict({"models": {"m": model}})
    w = spec.models["m"].class_weight_list(spec.classes)
    assert w[spec.classes.channel("mito_ribo")] == 4.0 and w[spec.classes.channel("nuc")] == 2.0
    assert sum(w) == 14 - 2 + 6
    challenge = from_dict({**yaml.safe_load(CHALLENGE.read_text()), "models": {"m": model}})
    o = challenge.classes
    w = challenge.models["m"].class_weight_list(o)
    assert {o.atomic[c] for c, v in enumerate(w) if v == 2.0} == {
        "ne_mem", "ne_lum", "np_out", "np_in", "hchrom", "nhchrom", "echrom", "nechrom",
        "nucpl", "nucleo"}  # nuc is a group there: its members
    with pytest.raises(ConfigError, match=r"'models.m.class_weights.foo': 'foo' is not a class"):
        from_dict({"models": {"m": {**model, "class_weights": {"foo": 1.0}}}})


def test_the_shipped_challenge_ontology_has_the_official_ids_and_lists():
    o = from_dict(yaml.safe_load(CHALLENGE.read_text())).classes
    assert (o.num_channels, len(o.groups), len(o.tested)) == (53, 21, 48)
    assert o.label_values("ecs") == (1,) and o.label_values("mito") == (3, 4, 5)
    assert o.label_values("np") == (22, 23) and o.is_group("nuc") and o.is_instance("nuc")
    assert sorted(o.instance) == sorted(
        ["nuc", "vim", "ves", "endo", "lyso", "ld", "perox", "mito", "np", "mt", "cell"])
    assert set(o.tested) <= set(o.names)
