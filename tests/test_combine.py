"""Tuned thresholds and ensembles from kept probabilities: the choices (per class, pooled as
the challenge pools), the cross-fitting (no crop scored with a choice made on it), and the
derived predictions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import ONTOLOGY, make_dataset_files, tiny_model

from cellmapseg import stages
from cellmapseg.combine.choose import choose_classes
from cellmapseg.combine.folds import assign
from cellmapseg.config import from_dict
from cellmapseg.data import predictions
from cellmapseg.data.inventory import validation_crop_ids, write_inventory
from cellmapseg.errors import ConfigError, InputError
from cellmapseg.evaluate.score import CSV_COLUMNS, read_table
from cellmapseg.layout import Results

SHAPE = (10, 12, 14)


def _rows(member: str, threshold: float, cls: str, crop: str, tp: int, fp: int, fn: int,
          guard: str = "") -> dict:
    row = dict.fromkeys(CSV_COLUMNS)
    row.update({"member": member, "threshold": threshold, "crop": crop, "crop_id": crop,
                "class": cls, "kind": "semantic", "tp": tp, "fp": fp, "fn": fn, "guard": guard})
    return row


def test_the_per_class_choice_pools_crops_as_the_challenge_does():
    # ecs: A has the higher pooled IoU (90 / 102 = .882 against 82 / 102 = .804), B the higher
    # mean of per-crop IoUs (.9 against .45): the challenge pools, so A.
    # pm: B at 0.4 beats everything of A; B at 0.3 would be better still but a guard fired.
    rows = [_rows("A", .5, "ecs", "c1", 90, 10, 0), _rows("A", .5, "ecs", "c2", 0, 0, 2),
            _rows("B", .5, "ecs", "c1", 80, 10, 10), _rows("B", .5, "ecs", "c2", 2, 0, 0),
            _rows("A", .5, "pm", "c1", 10, 10, 10), _rows("A", .5, "pm", "c2", 10, 10, 10),
            _rows("B", .4, "pm", "c1", 20, 5, 0), _rows("B", .4, "pm", "c2", 20, 5, 0),
            _rows("B", .3, "pm", "c1", 30, 0, 0), _rows("B", .3, "pm", "c2", 30, 0, 0, "skip"),
            # a crop that is not a tuning crop: A would win pm with it
            _rows("A", .5, "pm", "c3", 1000, 0, 0)]
    chosen = choose_classes(pd.DataFrame(rows), ["c1", "c2"], ONTOLOGY, ["A", "B"],
                            [0.5] * ONTOLOGY.num_channels)
    assert chosen["ecs"] == {"member": "A", "threshold": 0.5, "score": pytest.approx(90 / 102),
                             "tuned": True}
    assert (chosen["pm"]["member"], chosen["pm"]["threshold"]) == ("B", 0.4)
    assert chosen["pm"]["score"] == pytest.approx(40 / 50)
    # a class no tuning crop annotates keeps the fixed threshold and the first member
    assert chosen["nuc"] == {"member": "A", "threshold": 0.5, "score": None, "tuned": False}


def test_ties_go_to_the_threshold_nearest_the_fixed_one():
    rows = [_rows("A", t, "ecs", "c1", 5, 0, 0) for t in (0.2, 0.3, 0.7)]
    chosen = choose_classes(pd.DataFrame(rows), ["c1"], ONTOLOGY, ["A"],
                            [0.6] * ONTOLOGY.num_channels)
    assert chosen["ecs"]["threshold"] == 0.7


def test_folds_deal_crops_in_order_and_need_a_crop_each():
    assert assign(["a", "b", "c", "d", "e"], 2) == {"a": 0, "b": 1, "c": 0, "d": 1, "e": 0}
    with pytest.raises(InputError, match="tuning.folds' = 3 but there are only 2"):
        assign(["a", "b"], 3)


def test_variants_and_ensembles_name_what_they_are_built_from():
    model = {"m": tiny_model()}
    with pytest.raises(ConfigError) as err:
        from_dict({"models": model, "variants": {
            "m": {"model": "m", "thresholds": "tuned"},
            "t": {"model": "m", "tta": {}, "thresholds": "tuned"},
            "u": {"model": "nope", "thresholds": "tuned"},
            "v": {"model": "m"}},
            "ensembles": {"e": {"method": "mean", "members": ["m", "ghost"]}}})
    lines = str(err.value).splitlines()
    assert lines == [
        "config: key 'variants.m': the name is already a model",
        "config: key 'variants.t': tta and tuned thresholds are two variants: tune a variant "
        "whose model is this one",
        "config: key 'variants.u.model': 'nope' is not a key of models or of a tta variant",
        "config: key 'variants.v': set tta or thresholds: tuned (as it is, it is model m)",
        "config: key 'ensembles.e.members': 'ghost' is not a key of models or of a tta variant"]
    cfg = from_dict({"models": model, "variants": {"m_tta": {"model": "m", "tta": {}},
                                                   "m_tta_tuned": {"model": "m_tta",
                                                                   "thresholds": "tuned"}},
                     "ensembles": {"e": {"method": "per_class"}}})
    assert list(cfg.entries) == ["m", "m_tta", "m_tta_tuned", "e"]
    assert cfg.network_entries == ("m", "m_tta") and cfg.swept == ("m_tta", "m")
    assert cfg.entry("e").members == ("m",) and cfg.trained_model("m_tta_tuned") == "m"


# --- cross-fitting end to end: sweep, choose, derive, evaluate -------------------------------

def _label(shape: tuple[int, ...]) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[:, :, : shape[2] // 2] = ONTOLOGY.labels[ONTOLOGY.channel("ecs")]
    return label


# Crop A's ecs is found at thresholds up to 0.3 only (truth 90/255, background 25/255), crop B's
# from 0.5 to 0.7 (truth 190/255, background 115/255, which 0.4 and below take as ecs too).
LEVELS = {0: (90, 25), 1: (190, 115)}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned")
    label = _label(SHAPE)
    datalist = make_dataset_files(root / "data", n_train=1, n_val=2, shape=SHAPE,
                                  annotated_classes="0",
                                  crops={i: {"label": label} for i in range(3)})
    cfg = from_dict({"data": {"datalist": str(datalist)}, "models": {"m": tiny_model()},
                     "variants": {"m_tuned": {"model": "m", "thresholds": "tuned"}},
                     "ensembles": {"self": {"method": "mean", "members": ["m", "m"],
                                            "thresholds": "fixed"}}})
    inventory = root / "inventory.csv"
    write_inventory(cfg, inventory)
    crops = validation_crop_ids(inventory)
    R = Results(root / "results")
    fg = label == ONTOLOGY.labels[0]
    for i, crop in enumerate(crops):
        q = np.where(fg, *LEVELS[i]).astype(np.uint8)
        with predictions.writing(R.crop_probabilities("m", crop)) as store:
            arrays = predictions.create_probabilities(store, crop, SHAPE, (8.0,) * 3, ONTOLOGY)
            arrays["ecs"][...] = q
        stages.sweep(cfg, "m", [R.crop_probabilities("m", crop)], inventory, crop,
                     R.crop_sweep("m", crop))
    stages.choose(cfg, "m_tuned", inventory, {"m": [R.crop_sweep("m", c) for c in crops]},
                  R.choices("m_tuned"))
    for crop in crops:
        stages.derive(cfg, "m_tuned", R.choices("m_tuned"), [R.crop_probabilities("m", crop)],
                      inventory, crop, R.crop_predictions("m_tuned", crop),
                      R.crop_manifest("m_tuned", crop))
        stages.evaluate_crop(cfg, R.crop_predictions("m_tuned", crop), inventory, crop,
                             R.crop_eval("m_tuned", crop))
    return cfg, inventory, crops, R


def test_a_sweep_scores_each_crop_at_every_threshold(tuned):
    cfg, _, crops, R = tuned
    table = read_table(R.crop_sweep("m", crops[0]), ("threshold",))
    assert list(table["threshold"]) == list(cfg.tuning.grid)  # ecs, the one annotated class
    assert list(table["iou"]) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    table = read_table(R.crop_sweep("m", crops[1]), ("threshold",))
    assert list(table["iou"]) == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 0.0]  # half the crop is ecs


def test_tuned_thresholds_are_never_scored_on_the_crops_they_were_tuned_on(tuned):
    _, _, (a, b), R = tuned
    choices = json.loads(R.choices("m_tuned").read_text())
    assert choices["crop_folds"] == {a: 0, b: 1}
    fold0, fold1 = choices["per_fold"]
    assert (fold0["tuned_on"], fold0["scored"]) == ([b], [a])
    assert (fold1["tuned_on"], fold1["scored"]) == ([a], [b])
    # B's best (0.5, nearest the fixed 0.5) scores A, A's best (0.3) scores B
    assert fold0["classes"]["ecs"]["threshold"] == 0.5
    assert fold1["classes"]["ecs"]["threshold"] == 0.3
    # so A, scored at 0.5, finds none of its ecs (tuned on itself it would find all of it)
    ecs = zarr.open_group(str(R.crop_predictions("m_tuned", a)), mode="r")[a]["ecs"][...]
    assert not ecs.any()
    rows = read_table(R.crop_eval("m_tuned", a)).set_index("class")
    assert (rows.at["ecs", "tp"], rows.at["ecs", "iou"]) == (0, 0.0)
    rows = read_table(R.crop_eval("m_tuned", b)).set_index("class")
    assert rows.at["ecs", "fp"] > 0  # B at 0.3 takes its background as ecs
    manifest = json.loads(R.crop_manifest("m_tuned", a).read_text())
    assert manifest["folds"] == {a: 0} and manifest["crop_thresholds"][a][0] == 0.5


def test_the_submission_uses_choices_made_on_every_crop(tuned):
    _, _, crops, R = tuned
    final = json.loads(R.choices("m_tuned").read_text())["final"]
    assert final["tuned_on"] == crops
    # pooled over both crops: 0.2/0.3 find A and over-segment B; 0.5-0.7 find B only
    assert final["classes"]["ecs"]["threshold"] in (0.3, 0.5)


def test_an_ensemble_of_a_model_with_itself_is_that_model(tuned):
    cfg, inventory, crops, R = tuned
    stages.choose(cfg, "self", inventory, {}, R.choices("self"))
    for crop in crops:
        stages.derive(cfg, "self", R.choices("self"), [R.crop_probabilities("m", crop)],
                      inventory, crop, R.crop_predictions("self", crop),
                      R.crop_manifest("self", crop))
        derived = zarr.open_group(str(R.crop_predictions("self", crop)), mode="r")[crop]
        store = predictions.open_store(R.crop_probabilities("m", crop))
        q = predictions.probability_arrays(store, R.crop_probabilities("m", crop), crop,
                                           ONTOLOGY)
        for name in ONTOLOGY.atomic:
            np.testing.assert_array_equal(derived[name][...],
                                          predictions.above(q[name][...], 0.5))


def test_a_derived_crop_of_missing_probabilities_is_one_line(tuned, tmp_path):
    cfg, inventory, crops, R = tuned
    with pytest.raises(InputError, match="prediction store not found"):
        stages.derive(cfg, "m_tuned", R.choices("m_tuned"), [tmp_path / "none.zarr"],
                      inventory, crops[0], tmp_path / "out.zarr", tmp_path / "out.json")
    assert not (tmp_path / "out.zarr").exists() and not (tmp_path / "out.json").exists()


def test_choosing_with_more_folds_than_crops_is_one_line(tuned, tmp_path):
    cfg, inventory, crops, R = tuned
    raw = {"data": {"datalist": cfg.data.datalist}, "models": {"m": tiny_model()},
           "variants": {"m_tuned": {"model": "m", "thresholds": "tuned"}},
           "tuning": {"folds": 3}}
    with pytest.raises(InputError, match="tuning.folds' = 3 but there are only 2"):
        stages.choose(from_dict(raw), "m_tuned", inventory,
                      {"m": [R.crop_sweep("m", c) for c in crops]}, tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()



def test_test_crops_of_an_ensemble_cover_the_box_every_member_predicted(tmp_path):
    from cellmapseg.combine.choose import choices
    from cellmapseg.combine.derive import derive_test

    cfg = from_dict({"models": {"a": tiny_model(), "b": tiny_model()},
                     "ensembles": {"e": {"method": "mean", "thresholds": "fixed"}}})
    boxes = {"a": [[10, 30], [10, 30], [10, 30]], "b": [[12, 28], [11, 30], [10, 32]]}
    # kept probabilities: ecs 100 (a) and 200 (b), mean 150 > 127.5; pm 100 and 130, mean 115
    levels = {"a": {"ecs": 100, "pm": 100}, "b": {"ecs": 200, "pm": 130}}
    sources, manifests = [], []
    for m, box in boxes.items():
        shape = tuple(b - a for a, b in box)
        translation = [8.0 * a for a, _ in box]  # the EM level starts at 0 nm
        path = tmp_path / m / "probabilities.zarr"
        with predictions.writing(path) as store:
            arrays = predictions.create_probabilities(store, "crop5", shape, (8.0,) * 3,
                                                      ONTOLOGY, translation)
            for name, q in levels[m].items():
                arrays[name][...] = q
        sources.append(path)
        manifests.append({"crops": ["crop5"], "test_crops": {"crop5": {
            "dataset": "jrc_x", "box": box, "translation": translation, "classes": ["ecs"]}}})
    entry = cfg.entry("e")
    chosen = choices(entry, ["v1", "v2"], 2, pd.DataFrame(columns=["member", "threshold",
                                                                   *CSV_COLUMNS]),
                     ONTOLOGY, [0.5] * ONTOLOGY.num_channels, cfg.tuning.grid)
    manifest = derive_test(cfg, entry, chosen, sources, manifests, tmp_path / "e.zarr")
    crop = zarr.open_group(str(tmp_path / "e.zarr"), mode="r")["crop5"]
    assert crop["ecs"].shape == (16, 19, 20)
    assert crop["ecs"].attrs["translation"] == [96.0, 88.0, 80.0]
    assert crop["ecs"][...].all() and not crop["pm"][...].any()
    assert manifest["test_crops"]["crop5"]["box"] == [[12, 28], [11, 30], [10, 30]]
