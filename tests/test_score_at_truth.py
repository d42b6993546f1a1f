"""Scoring at the ground truth's own resolution (evaluate.truth): 8 nm predictions brought to a
4 nm Zarr ground truth by the server's rules give the counts a hand computation gives at 4 nm;
the placement follows the translation, `{label}_mask` removes voxels from both sides, instance
ids survive nearest-neighbour upsampling and truth ids are the truth's instances, a group is
scored against its own array or the union of its members, and each bad input is one line."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import ONTOLOGY

from cellmapseg.challenge_layout import crop_path, dataset_path
from cellmapseg.data import zarr_crops
from cellmapseg.data.manifest import read_manifest, write_manifest
from cellmapseg.data.ngff import write_multiscale
from cellmapseg.errors import InputError
from cellmapseg.evaluate.score import evaluate, score_table
from cellmapseg.evaluate.truth import ZarrTruth
from cellmapseg.synthetic.zarr_layout import LabelCrop, ZarrDataset, write_dataset, write_manifests

DATASET = "jrc_synth-1"
EM_VS = (8.0, 8.0, 8.0)  # the training (prediction) voxel size
FINE = (4.0, 4.0, 4.0)  # the ground truth's
SHAPE = (8, 8, 8)  # truth voxels, 4 nm: 32 nm a side
PRED_SHAPE = (4, 4, 4)  # the same box at 8 nm
# EM voxel 0 is centred at 0 nm, so its edges lie at -4 + 8 i. The crop's first 4 nm voxel
# edge sits at 12 nm, on the edge of EM voxel 2: its centre is at 14 nm, and the prediction's
# first 8 nm voxel (EM voxel 2) is centred at 16 nm.
TRUTH_TR = (14.0, 14.0, 14.0)
PRED_TR = (16.0, 16.0, 16.0)
CORNERS = 4  # voxels of a full sheet that linear upsampling loses (see sheet_counts)


@pytest.fixture(params=[128, 3], ids=["one-block", "block-3"])
def block(request) -> int:
    """Every case is scored in one block and in blocks of 3 voxels: the same numbers."""
    return request.param


def sheet(z: int, shape=SHAPE) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[z] = 1
    return out


def write_case(tmp: Path, labels: dict[str, np.ndarray], pred: dict[str, np.ndarray],
               annotated: tuple[str, ...], instance: frozenset[str] = frozenset(),
               shift: tuple[float, float, float] = (0.0, 0.0, 0.0)):
    """A one-crop Zarr dataset (truth at 4 nm), its train manifest, an 8 nm predictions store
    and the inventory; returns (predictions folder, inventory, ZarrTruth)."""
    ds = ZarrDataset(DATASET, np.full((8, 8, 8), 7, np.uint8), EM_VS,
                     crops=(LabelCrop(1, FINE, TRUTH_TR, labels),), instance=instance)
    write_dataset(tmp / "data", ds, chunks=4)
    write_manifests(tmp / "train.csv", tmp / "test.csv", [ds])
    store = zarr.open_group(str(tmp / "model" / "predictions.zarr"), mode="w", zarr_format=2)
    group = store.require_group("crop1")
    for name, values in pred.items():
        dtype = "uint32" if ONTOLOGY.is_instance(name) else "uint8"
        arr = group.create_array(name, shape=PRED_SHAPE, chunks=(2, 2, 2), dtype=dtype)
        arr[...] = values.astype(dtype)
        arr.attrs["voxel_size"] = list(EM_VS)
        arr.attrs["translation"] = [t + s for t, s in zip(PRED_TR, shift, strict=True)]
    inventory = pd.DataFrame([{
        "crop": f"{DATASET}_crop1", "dataset": DATASET, "crop_id": "crop1",
        "split": "validation", "image": "unused.nii.gz", "label": "unused.nii.gz",
        "d": PRED_SHAPE[0], "h": PRED_SHAPE[1], "w": PRED_SHAPE[2],
        "annotated_classes": ",".join(str(ONTOLOGY.channel(n)) for n in annotated)}])
    return tmp / "model", inventory, ZarrTruth.read(tmp / "data", tmp / "train.csv")


def score(tmp: Path, case, block: int = 128) -> pd.DataFrame:
    pred, inventory, truth = case
    table, crops = score_table(pred, inventory, EM_VS, tmp / "scratch", ONTOLOGY, block=block,
                               truth=truth)
    assert crops == [f"{DATASET}_crop1"]
    return table


def row(table: pd.DataFrame, name: str) -> pd.Series:
    sel = table[table["class"] == name]
    assert len(sel) == 1
    return sel.iloc[0]


def counts(r: pd.Series) -> tuple[int, int, int]:
    return int(r.tp), int(r.fp), int(r.fn)


def crop_group(tmp: Path) -> zarr.Group:
    return zarr.open_group(str(dataset_path(tmp / "data", DATASET) / crop_path("crop1")),
                           mode="a", zarr_format=2)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert len(text.splitlines()) == 1, text
    return text


# ------------------------------------------------------------------------------ counting
def sheet_counts() -> tuple[int, int, int]:
    """Hand computation for an 8 nm plane z = 1 against a 4 nm sheet z = 3 (full in y, x).

    Linear upsampling by 2 samples the 8 nm voxels at (o + 0.5) / 2 - 0.5 with zeros outside:
    along z the plane gives 0, .25, .75, .75, .25, 0, 0, 0, so 4 nm planes 2 and 3; along y
    and x the full extent gives .75 at the two border voxels and 1 inside. The product passes
    0.5 except where both y and x are borders (.75 ** 3 = .42): 64 - 4 voxels in each of
    planes 2 and 3. Against the truth plane 3: tp = 60 (plane 3), fp = 60 (plane 2), fn = 4
    (plane 3's corners). At 8 nm the same two arrays would score 16, 0, 0."""
    plane = SHAPE[1] * SHAPE[2] - CORNERS
    return plane, plane, CORNERS


def test_an_8nm_prediction_of_a_4nm_sheet_scores_the_4nm_hand_count(tmp_path, block):
    labels = {"ecs": sheet(3)}
    # The prediction is the crop's own 8 nm training label: the 2x-downsampled truth.
    write_case(tmp_path, labels, {"ecs": np.zeros(PRED_SHAPE)}, ("ecs",))
    train = zarr_crops.read_training_crop(tmp_path / "data", DATASET, 1, ONTOLOGY, EM_VS)
    down = (train.label == ONTOLOGY.labels[ONTOLOGY.channel("ecs")]).astype(np.uint8)
    np.testing.assert_array_equal(down, sheet(1, PRED_SHAPE))
    case = write_case(tmp_path, labels, {"ecs": down}, ("ecs",))
    table = score(tmp_path, case, block)
    ecs = row(table, "ecs")
    assert counts(ecs) == sheet_counts() == (60, 60, 4)
    assert ecs.kind == "semantic" and ecs.iou == pytest.approx(60 / 124)
    assert (ecs.n_pred, ecs.n_true) == (120, 64)


def test_a_one_voxel_translation_offset_moves_the_prediction_by_one_truth_voxel(tmp_path, block):
    labels, pred = {"ecs": sheet(2)}, {"ecs": sheet(1, PRED_SHAPE)}
    on_grid = row(score(tmp_path, write_case(tmp_path, labels, pred, ("ecs",)), block), "ecs")
    assert counts(on_grid) == (60, 60, 4)  # planes 2 and 3 predicted, plane 2 true
    moved = write_case(tmp_path, labels, pred, ("ecs",), shift=(4.0, 0.0, 0.0))
    shifted = row(score(tmp_path, moved, block), "ecs")
    assert counts(shifted) == (0, 120, 64)  # planes 3 and 4 predicted: none true


@pytest.mark.parametrize("form", ["multiscale", "array"])
def test_a_label_mask_removes_its_voxels_from_prediction_and_truth(tmp_path, block, form):
    case = write_case(tmp_path, {"ecs": sheet(3)}, {"ecs": sheet(1, PRED_SHAPE)}, ("ecs",))
    mask = np.ones(SHAPE, np.uint8)
    mask[:, :4, :] = 0  # y < 4 is uncertain
    crop = crop_group(tmp_path)
    if form == "multiscale":
        write_multiscale(crop.create_group("ecs_mask"), {"s0": mask}, [FINE], [TRUTH_TR],
                         chunks=4)
    else:  # a plain array, as the server's truth store holds it
        crop.create_array("ecs_mask", shape=SHAPE, dtype="uint8", chunks=(4, 4, 4))[...] = mask
    ecs = row(score(tmp_path, case, block), "ecs")
    # Half of each plane is left; two of the four lost corners lie in it (y = 7).
    assert counts(ecs) == (30, 30, 2)


def test_instance_ids_survive_nearest_upsampling_and_truth_ids_are_the_instances(tmp_path,
                                                                                 block):
    nuc = np.zeros(SHAPE, np.uint8)
    nuc[:4, :4, :4] = 1  # two truth instances touching across z = 3 | 4 ...
    nuc[4:, :4, :4] = 2
    nuc[:2, 6:, 6:] = 3  # ... and one nobody predicts
    pred = np.zeros(PRED_SHAPE, np.uint32)
    pred[:2, :2, :2] = 5  # touching ids: linear interpolation would blend them into one
    pred[2:, :2, :2] = 9
    case = write_case(tmp_path, {"nuc": nuc}, {"nuc": pred}, ("nuc",),
                      instance=frozenset({"nuc"}))
    r = row(score(tmp_path, case, block), "nuc")
    assert r.kind == "instance" and r.guard == ""
    assert (r.n_pred, r.n_true) == (2, 3)  # ids kept on both sides: the touching pair is two
    assert counts(r) == (2, 0, 1)
    # distances in the truth's voxel size: cap = min(8 * 4 nm) / 2, normalised by |(4, 4, 4)|
    cap_norm = 1.01 ** (-16.0 / math.sqrt(48.0))
    assert int(r.n_hausdorff) == 3
    assert r.hausdorff_norm_sum == pytest.approx(2.0 + cap_norm)
    assert r.f1 == pytest.approx(0.8)


def test_a_group_is_scored_against_its_own_array_else_the_union_of_its_members(tmp_path):
    mem, lum = sheet(1), np.zeros(SHAPE, np.uint8)
    lum[2:4] = 1
    annotated = ("golgi_mem", "golgi_lum")
    pred = {n: np.zeros(PRED_SHAPE) for n in ("golgi_mem", "golgi_lum", "golgi")}
    union = score(tmp_path, write_case(tmp_path, {"golgi_mem": mem, "golgi_lum": lum}, pred,
                                       annotated))
    assert list(union["class"]) == ["golgi_mem", "golgi_lum", "golgi"]
    assert counts(row(union, "golgi")) == (0, 0, 64 + 128)
    own = score(tmp_path, write_case(tmp_path, {"golgi_mem": mem, "golgi_lum": lum,
                                                "golgi": sheet(6)}, pred, annotated))
    assert counts(row(own, "golgi")) == (0, 0, 64)


# ---------------------------------------------------------------------------- bad inputs
def test_a_class_missing_from_the_zarr_crop_is_one_line_naming_it_and_nothing_is_written(
        tmp_path):
    pred = {"ecs": sheet(1, PRED_SHAPE), "nuc": np.zeros(PRED_SHAPE)}
    case = write_case(tmp_path, {"ecs": sheet(3)}, pred, ("ecs", "nuc"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError) as exc:
        evaluate(case[0], case[1], EM_VS, out / "eval.csv", out / "eval_summary.json", ONTOLOGY,
                 truth=case[2])
    text = one_line(exc)
    assert "class nuc missing" in text and "crop1" in text and DATASET in text
    assert list(out.iterdir()) == []


def _drop_manifest_row(tmp: Path, case):
    rows = [replace(r, class_label="pm") for r in read_manifest(tmp / "train.csv")]
    write_manifest(tmp / "train.csv", rows)  # the crop's only row now names another class
    return case[0], case[1], ZarrTruth.read(tmp / "data", tmp / "train.csv")


def _drop_translation(tmp: Path, case):
    arr = zarr.open_array(str(case[0] / "predictions.zarr" / "crop1" / "ecs"), mode="a")
    arr.attrs.put({"voxel_size": list(EM_VS)})
    return case


def _no_dataset_column(tmp: Path, case):
    return case[0], case[1].drop(columns="dataset"), case[2]


def _crop_not_in_zarr(tmp: Path, case):
    (case[0] / "predictions.zarr" / "crop1").rename(case[0] / "predictions.zarr" / "crop7")
    return case[0], case[1].assign(crop_id="crop7"), case[2]


def _truth_off_its_manifest_grid(tmp: Path, case):
    rows = read_manifest(tmp / "train.csv")
    write_manifest(tmp / "train.csv", [replace(r, grid=replace(r.grid, translation=(10.0, 14.0,
                                                                                   14.0)))
                                       for r in rows])
    return case[0], case[1], ZarrTruth.read(tmp / "data", tmp / "train.csv")


@pytest.mark.parametrize(("spoil", "names"), [
    (_drop_manifest_row, ("class ecs", "no grid in the train manifest")),
    (_drop_translation, ("crop1/ecs", "attribute translation missing")),
    (_no_dataset_column, ("column 'dataset' missing",)),
    (_crop_not_in_zarr, ("crop7 of dataset", "not found")),
    (_truth_off_its_manifest_grid, ("crop1/ecs/s0", "train manifest gives")),
], ids=["no-manifest-grid", "no-translation", "no-dataset", "no-crop", "grid-mismatch"])
def test_each_bad_input_is_one_line_naming_it(tmp_path, spoil, names):
    case = spoil(tmp_path, write_case(tmp_path, {"ecs": sheet(3)}, {"ecs": sheet(1, PRED_SHAPE)},
                                      ("ecs",)))
    with pytest.raises(InputError) as exc:
        score(tmp_path, case)
    text = one_line(exc)
    for name in names:
        assert name in text, text
    assert not (tmp_path / "scratch").exists()  # raised before any voxel was scored


def test_black_padding_on_the_prediction_grid_leaves_its_truth_voxels_out(tmp_path, block):
    from cellmapseg.data.padding import border_runs

    pred, inventory, truth = write_case(tmp_path, {"ecs": sheet(3)}, {"ecs": sheet(1, PRED_SHAPE)},
                                        ("ecs",))
    image = np.full(PRED_SHAPE, 9, np.uint8)
    image[:, :2, :] = 0  # 8 nm rows y < 2 are black: 4 nm rows y < 4 on the truth's grid
    border_runs(image).save(tmp_path / "runs")
    inventory = inventory.assign(padding=str(tmp_path / "runs"))
    table, _ = score_table(pred, inventory, EM_VS, tmp_path / "scratch", ONTOLOGY, block=block,
                           truth=truth, padding="border")
    # the same voxels as the y < 4 label mask above leaves out
    assert counts(row(table, "ecs")) == (30, 30, 2)
    table, _ = score_table(pred, inventory, EM_VS, tmp_path / "scratch", ONTOLOGY, block=block,
                           truth=truth, padding="none")
    assert counts(row(table, "ecs")) == (60, 60, 4)
