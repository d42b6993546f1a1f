"""Challenge scoring on hand-built crops with known answers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import ONTOLOGY

from cellmapseg.errors import InputError
from cellmapseg.evaluate import instance
from cellmapseg.evaluate.aggregate import METRIC_VERSION, instance_class
from cellmapseg.evaluate.instance import (
    max_distance,
    ratio_cutoff,
    relabel_components,
    score_instances,
)
from cellmapseg.evaluate.metrics import count_block
from cellmapseg.evaluate.score import evaluate
from cellmapseg.evaluate.semantic import semantic_counts

SP = (8.0, 8.0, 8.0)
CH = {name: c for c, name in enumerate(ONTOLOGY.atomic)}  # atomic class -> channel
SHAPE = (24, 24, 24)


@pytest.fixture(autouse=True, params=[instance.BLOCK, 5], ids=["one-block", "block-5"])
def instance_block(request, monkeypatch):
    """Every scoring test runs with the crop in one block and in blocks of 5 voxels (objects
    and boxes cut by block borders): the numbers must be the same."""
    monkeypatch.setattr(instance, "BLOCK", request.param)
    return request.param


def norm(d: float, voxel=SP) -> float:
    return 1.01 ** (-d / math.sqrt(sum(v * v for v in voxel)))


def box(lo, hi, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


@dataclass
class Crop:
    crop_id: str
    truth: dict[str, np.ndarray]  # atomic class -> bool mask
    pred: dict[str, np.ndarray]  # class (atomic or group) -> 0/1 mask or instance ids
    annotated: tuple[str, ...]  # atomic classes
    shape: tuple[int, int, int] = SHAPE
    split: str = "validation"
    extra: dict = field(default_factory=dict)


def write_case(tmp: Path, crops: list[Crop], spacing=SP, attr_spacing=None):
    """NIfTI labels + predictions.zarr (zarr_format 2) + inventory DataFrame."""
    store = zarr.open_group(str(tmp / "model" / "predictions.zarr"), mode="w", zarr_format=2)
    rows = []
    for crop in crops:
        label = np.zeros(crop.shape, dtype=np.uint8)
        for name, mask in crop.truth.items():
            label[mask] = ONTOLOGY.labels[CH[name]]
        path = tmp / f"jrc_x_{crop.crop_id}.nii.gz"
        nib.save(nib.Nifti1Image(label, np.diag([*spacing, 1.0])), path)
        group = store.require_group(crop.crop_id)
        for name in ONTOLOGY.names:  # atomic classes and groups, as prediction writes them
            dtype = "uint32" if ONTOLOGY.is_instance(name) else "uint8"
            arr = group.create_array(name, shape=crop.shape, chunks=(8, 8, 8), dtype=dtype)
            arr[...] = crop.pred.get(name, np.zeros(crop.shape)).astype(dtype)
            arr.attrs["voxel_size"] = list(attr_spacing or spacing)
            arr.attrs["translation"] = [0.0, 0.0, 0.0]
        rows.append({"crop": f"jrc_x_{crop.crop_id}", "crop_id": crop.crop_id,
                     "split": crop.split, "image": str(path), "label": str(path),
                     "d": crop.shape[0], "h": crop.shape[1], "w": crop.shape[2],
                     "annotated_classes": ",".join(str(CH[n]) for n in crop.annotated)})
    return tmp / "model", pd.DataFrame(rows)


def run(tmp: Path, crops: list[Crop], spacing=SP, **kw):
    pred, inv = write_case(tmp, crops, spacing)
    summary = evaluate(pred, inv, spacing, tmp / "eval.csv", tmp / "eval_summary.json", ONTOLOGY,
                       **kw)
    return summary, pd.read_csv(tmp / "eval.csv", keep_default_na=False, na_values=[""])


def row(table: pd.DataFrame, cls: str, crop: str | None = None) -> pd.Series:
    sel = table[(table["class"] == cls) & ((table["crop_id"] == crop) if crop else True)]
    assert len(sel) == 1
    return sel.iloc[0]


NUC_A = box((2, 2, 2), (6, 6, 6))
NUC_B = box((12, 12, 12), (18, 18, 18))
ECS = box((0, 0, 20), (24, 24, 24))  # disjoint from the nuclei and mito_mem below


def ids(*masks: np.ndarray) -> np.ndarray:
    out = np.zeros(masks[0].shape, dtype=np.uint32)
    for i, m in enumerate(masks, start=1):
        out[m] = i
    return out


# ---- whole runs ------------------------------------------------------------------------------

def test_perfect_prediction(tmp_path):
    truth = {"ecs": ECS, "mito_mem": box((10, 0, 10), (14, 5, 20)), "nuc": NUC_A | NUC_B}
    pred = {"ecs": ECS, "mito_mem": truth["mito_mem"], "nuc": ids(NUC_A, NUC_B) * 7}
    summary, table = run(tmp_path, [Crop("crop001", truth, pred, ("ecs", "mito_mem", "nuc"))])
    assert list(table["class"]) == ["ecs", "mito_mem", "nuc"]
    assert (table.loc[table.kind == "semantic", "iou"] == 1.0).all()
    nuc = row(table, "nuc")
    assert (nuc.tp, nuc.fp, nuc.fn, nuc.n_pred, nuc.n_true) == (2, 0, 0, 2, 2)
    assert nuc.f1 == nuc.mean_norm_hausdorff == nuc.combined == 1.0
    assert summary["overall"] == summary["semantic_mean_iou"] == 1.0
    assert summary["instance_mean_combined"] == 1.0
    assert summary["metric_version"] == METRIC_VERSION
    assert summary["crops"] == ["jrc_x_crop001"]
    assert summary["ontology"] == ONTOLOGY.summary()
    assert summary["leaderboard"]["tested"] == list(ONTOLOGY.tested)


def test_empty_prediction(tmp_path):
    truth = {"ecs": ECS, "nuc": NUC_A | NUC_B}
    summary, table = run(tmp_path, [Crop("crop001", truth, {}, ("ecs", "nuc"))])
    ecs, nuc = row(table, "ecs"), row(table, "nuc")
    assert (ecs.tp, ecs.fp, ecs.fn, ecs.iou, ecs.dice) == (0, 0, ECS.sum(), 0.0, 0.0)
    cap = max_distance(SP, SHAPE)
    assert cap == 96.0  # half of 24 voxels * 8 nm
    assert (nuc.tp, nuc.fp, nuc.fn, nuc.n_hausdorff) == (0, 0, 2, 2)  # one cap per truth
    assert nuc.mean_norm_hausdorff == pytest.approx(norm(cap))
    assert nuc.f1 == nuc.combined == 0.0
    assert summary["overall"] == 0.0


def test_empty_truth(tmp_path):
    crops = [
        Crop("crop001", {}, {}, ("ecs", "nuc")),  # nothing anywhere: a correct answer
        Crop("crop002", {}, {"ecs": ECS, "nuc": ids(NUC_A)}, ("ecs", "nuc")),
    ]
    summary, table = run(tmp_path, crops)
    assert row(table, "ecs", "crop001").iou == 1.0
    assert row(table, "nuc", "crop001").combined == 1.0
    ecs, nuc = row(table, "ecs", "crop002"), row(table, "nuc", "crop002")
    assert (ecs.tp, ecs.fp, ecs.fn, ecs.iou) == (0, ECS.sum(), 0, 0.0)
    assert (nuc.tp, nuc.fp, nuc.fn, nuc.f1, nuc.combined) == (0, 1, 0, 0.0, 0.0)
    assert nuc.mean_norm_hausdorff == pytest.approx(norm(96.0))  # the fp's cap
    assert summary["classes"]["ecs"]["iou"] == 0.0


def test_pooled_iou_over_crops_is_not_mean_of_crop_ious(tmp_path):
    one = box((0, 0, 0), (1, 1, 1))
    big = box((0, 0, 0), (10, 10, 1))  # 100 voxels, 1 predicted
    crops = [Crop("crop001", {"ecs": one}, {"ecs": one}, ("ecs",)),
             Crop("crop002", {"ecs": big}, {"ecs": one}, ("ecs",))]
    summary, table = run(tmp_path, crops)
    assert list(table["iou"]) == [1.0, 0.01]
    assert summary["classes"]["ecs"]["iou"] == pytest.approx(2 / 101)  # not 0.505
    assert summary["classes"]["ecs"]["dice"] == pytest.approx(4 / 103)
    # no instance class scored: the reference's overall instance score is 0, so overall is 0
    assert summary["instance_mean_combined"] == 0.0 and summary["overall"] == 0.0


def test_overall_is_geometric_mean_of_class_means(tmp_path):
    ecs, pm = box((0, 0, 0), (2, 1, 1)), box((9, 0, 0), (11, 1, 1))
    truth = {"ecs": ecs, "pm": pm, "nuc": NUC_A}
    pred = {"ecs": ecs, "pm": box((9, 0, 0), (10, 1, 1)), "nuc": ids(NUC_A)}
    summary, _ = run(tmp_path, [Crop("crop001", truth, pred, ("ecs", "pm", "nuc"))])
    assert summary["semantic_mean_iou"] == pytest.approx((1.0 + 0.5) / 2)  # plain class mean
    assert summary["overall"] == pytest.approx(math.sqrt(1.0 * 0.75))


def test_unannotated_class_is_never_scored(tmp_path):
    truth = {"ecs": ECS, "pm": box((10, 10, 10), (12, 12, 12))}
    pred = {"ecs": ECS, "pm": np.ones(SHAPE), "nuc": ids(NUC_A)}
    summary, table = run(tmp_path, [Crop("crop001", truth, pred, ("ecs",))])
    assert list(table["class"]) == ["ecs"]
    assert list(summary["classes"]) == ["ecs"]


def test_group_is_scored_only_where_all_its_members_are_annotated(tmp_path):
    """ves = ves_mem | ves_lum (an instance group): its truth is the union of the members'
    label values; a crop annotating only ves_mem gets no ves row."""
    mem, lum = box((2, 2, 2), (6, 6, 3)), box((2, 2, 3), (6, 6, 6))  # one object, two values
    other = box((12, 12, 12), (16, 16, 16))
    crops = [
        Crop("crop001", {"ves_mem": mem, "ves_lum": lum}, {"ves_mem": mem, "ves_lum": lum,
             "ves": ids(mem | lum, other)}, ("ves_mem", "ves_lum")),
        Crop("crop002", {"ves_mem": mem}, {"ves_mem": mem, "ves": ids(mem)}, ("ves_mem",)),
    ]
    summary, table = run(tmp_path, crops)
    assert list(zip(table["crop_id"], table["class"], strict=True)) == [
        ("crop001", "ves_mem"), ("crop001", "ves_lum"), ("crop001", "ves"),
        ("crop002", "ves_mem")]
    ves = row(table, "ves")
    assert (ves.kind, ves.tp, ves.fp, ves.fn, ves.n_true) == ("instance", 1, 1, 0, 1)
    assert row(table, "ves_lum").kind == "semantic"
    assert summary["classes"]["ves"]["kind"] == "instance"
    assert list(summary["classes"]) == ["ves_mem", "ves_lum", "ves"]


MITO_MEM = box((4, 4, 4), (10, 10, 10)) & ~box((5, 5, 5), (9, 9, 9))
MITO_RIBO = box((6, 6, 6), (7, 7, 7))
MITO_LUM = box((5, 5, 5), (9, 9, 9)) & ~MITO_RIBO
GOLGI_MEM = box((14, 14, 14), (20, 20, 16))
GOLGI_LUM = box((14, 14, 16), (20, 20, 20))


def test_a_group_is_scored_on_its_members_union_where_all_of_them_are_annotated(tmp_path):
    """mito (an instance group) and golgi (a semantic one) get rows in the crop annotating all
    their members, scored against the union of the members' label values; none in the crop
    annotating only some of them."""
    mito = ("mito_mem", "mito_lum", "mito_ribo")
    truth = {"mito_mem": MITO_MEM, "mito_lum": MITO_LUM, "mito_ribo": MITO_RIBO,
             "golgi_mem": GOLGI_MEM, "golgi_lum": GOLGI_LUM}
    pred = {"mito": ids(MITO_MEM | MITO_LUM | MITO_RIBO), "golgi": GOLGI_LUM}
    part = {"mito_mem": MITO_MEM, "mito_lum": MITO_LUM, "golgi_mem": GOLGI_MEM}
    crops = [Crop("crop001", truth, pred, (*mito, "golgi_mem", "golgi_lum")),
             Crop("crop002", part, pred, ("mito_mem", "mito_lum", "golgi_mem"))]
    summary, table = run(tmp_path, crops)
    assert list(table.loc[table.crop_id == "crop001", "class"]) == [
        *mito, "golgi_mem", "golgi_lum", "mito", "golgi"]
    assert list(table.loc[table.crop_id == "crop002", "class"]) == [
        "mito_mem", "mito_lum", "golgi_mem"]
    m = row(table, "mito", "crop001")
    assert m.kind == "instance"
    assert (m.tp, m.fp, m.fn, m.n_pred, m.n_true, m.combined) == (1, 0, 0, 1, 1, 1.0)
    g = row(table, "golgi", "crop001")
    assert g.kind == "semantic"
    assert (g.tp, g.fp, g.fn) == (GOLGI_LUM.sum(), 0, GOLGI_MEM.sum())
    assert g.iou == pytest.approx(2 / 3)  # 144 of the 216 truth voxels
    assert summary["classes"]["mito"]["kind"] == "instance"
    assert summary["classes"]["golgi"]["iou"] == pytest.approx(2 / 3)
    assert summary["ontology"] == ONTOLOGY.summary()


def test_the_leaderboard_scores_unpredicted_tested_classes_zero(tmp_path):
    truth = {"ecs": ECS, "nuc": NUC_A}
    pred = {"ecs": ECS, "nuc": ids(NUC_A)}
    summary, _ = run(tmp_path, [Crop("crop001", truth, pred, ("ecs", "nuc"))])
    board = summary["leaderboard"]
    assert board["tested"] == list(ONTOLOGY.tested) and board["n_tested"] == 48
    assert board["covered"] == len([t for t in ONTOLOGY.tested if t in ONTOLOGY.names])
    assert "lyso" in board["not_predicted"] and board["scores"]["lyso"] == 0.0
    assert "pm" in board["no_truth"] and "pm" not in board["scores"]  # predicted, unannotated
    assert board["scores"]["ecs"] == board["scores"]["nuc"] == 1.0
    semantic = [v for t, v in board["scores"].items() if not ONTOLOGY.is_instance(t)]
    instance = [v for t, v in board["scores"].items() if ONTOLOGY.is_instance(t)]
    assert board["semantic_mean_iou"] == pytest.approx(sum(semantic) / len(semantic))
    assert board["instance_mean_combined"] == pytest.approx(sum(instance) / len(instance))
    assert 0.0 < board["overall"] < summary["overall"] == 1.0


def test_non_isotropic_run(tmp_path):
    sp, shape = (16.0, 8.0, 4.0), (20, 20, 40)
    truth = box((4, 4, 4), (8, 8, 8), shape)
    pred = box((7, 4, 4), (11, 8, 8), shape)
    _, table = run(tmp_path, [Crop("crop001", {"nuc": truth}, {"nuc": pred}, ("nuc",), shape)],
                   spacing=sp)
    nuc = row(table, "nuc")
    assert nuc.tp == 1 and nuc.mean_norm_hausdorff == pytest.approx(norm(48.0, sp))


# ---- instance rules --------------------------------------------------------------------------

def test_split_instance():
    truth = box((10, 4, 4), (14, 8, 8))  # 64 voxels
    big, small = box((10, 4, 4), (13, 8, 8)), box((13, 4, 4), (14, 8, 8))
    s = score_instances(ids(big, small), truth, SP)  # touching, different ids: two components
    assert (s.n_pred, s.n_true, s.tp, s.fp, s.fn) == (2, 1, 1, 1, 0)
    # matched (IoU 0.75): the truth slice z=13 is 1 voxel (8 nm) from the big piece; fp -> cap
    assert s.n_dist == 2 and s.norm_sum == pytest.approx(norm(8.0) + norm(96.0))
    f1, mean, combined = s.metrics()
    assert f1 == pytest.approx(2 / 3)
    assert combined == pytest.approx(math.sqrt(2 / 3 * (norm(8.0) + norm(96.0)) / 2))


def test_merged_instance():
    a, b = box((4, 4, 4), (8, 8, 8)), box((9, 4, 4), (11, 8, 8))  # gap at z=8: two truths
    s = score_instances(box((4, 4, 4), (11, 8, 8)).astype(np.uint8), a | b, SP)
    assert (s.n_pred, s.n_true, s.tp, s.fp, s.fn) == (1, 2, 1, 0, 1)
    # matched to a (IoU 64/112 > 32/112): pred voxel z=10 is 3 voxels from a; b -> cap
    assert s.norm_sum == pytest.approx(norm(24.0) + norm(96.0))
    assert s.metrics()[0] == pytest.approx(2 / 3)


@pytest.mark.parametrize(("voxel", "shape", "expected"), [
    ((8.0, 8.0, 8.0), (24, 24, 24), 24.0),
    ((16.0, 8.0, 4.0), (20, 20, 40), 48.0),
])
def test_shifted_instance_hausdorff(voxel, shape, expected):
    truth = box((4, 4, 4), (8, 8, 8), shape)
    pred = box((7, 4, 4), (11, 8, 8), shape)  # shifted 3 voxels along axis 0, 1 slice overlap
    s = score_instances(pred.astype(np.uint32), truth, voxel)
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)
    assert s.cap == max_distance(voxel, shape) > expected
    assert s.norm_sum == pytest.approx(1.01 ** (-expected / np.linalg.norm(voxel)))


def test_unmatched_instances_get_the_cap():
    far = box((18, 18, 18), (22, 22, 22))
    s = score_instances(far.astype(np.uint8), NUC_A, SP)  # no overlap; > cap apart
    assert (s.tp, s.fp, s.fn, s.n_dist) == (0, 1, 1, 2)
    assert s.norm_sum == pytest.approx(2 * norm(96.0))
    s = score_instances(np.zeros(SHAPE, np.uint8), NUC_A | NUC_B, SP)
    assert (s.fn, s.n_dist, s.norm_sum) == (2, 2, pytest.approx(2 * norm(96.0)))
    s = score_instances(far.astype(np.uint8), np.zeros(SHAPE, bool), SP, cap=50.0)
    assert (s.fp, s.n_dist, s.norm_sum) == (1, 1, pytest.approx(norm(50.0)))


def test_unmatched_truth_meets_unmatched_prediction_with_its_id():
    """Reference quirk: unmatched predictions keep their component id after remapping."""
    t1, t2 = box((2, 2, 2), (6, 6, 6)), box((10, 10, 10), (12, 12, 12))
    fp = box((10, 10, 13), (12, 12, 15))  # beside t2 (no overlap), component id 2
    s = score_instances(ids(t1, fp), t1 | t2, SP)
    assert (s.tp, s.fp, s.fn) == (1, 1, 1)
    # t2 is compared with the fp (3 voxels = 24 nm), not given the cap; the fp adds a cap
    assert s.norm_sum == pytest.approx(norm(0.0) + norm(24.0) + norm(96.0))


def test_ratio_guard_skips_the_crop():
    assert ratio_cutoff(1) == pytest.approx(10 + 50 * math.exp(-1 / 5))  # 50.94
    truth = box((0, 0, 0), (2, 2, 2))
    dots = np.zeros(SHAPE, dtype=np.uint8)
    dots[::2, ::2, 4::2][np.unravel_index(np.arange(51), (12, 12, 10))] = 1
    s = score_instances(dots, truth, SP)
    assert s.n_pred == 51 and s.guard.startswith("skipped_too_many_instances")
    assert (s.tp, s.fp, s.fn, s.n_dist) == (0, 0, 0, 0)
    assert all(math.isnan(v) for v in s.metrics())
    dots.flat[np.flatnonzero(dots)[0]] = 0
    s50 = score_instances(dots, truth, SP)
    assert s50.guard == "" and (s50.fp, s50.fn) == (50, 1)
    # a skipped crop adds nothing to the class pool
    rows = pd.DataFrame([
        {"tp": 1, "fp": 0, "fn": 0, "hausdorff_norm_sum": 1.0, "n_hausdorff": 1, "guard": ""},
        {"tp": 0, "fp": 0, "fn": 0, "hausdorff_norm_sum": 0.0, "n_hausdorff": 0,
         "guard": s.guard},
    ])
    pooled = instance_class(rows)
    assert pooled["combined"] == 1.0 and pooled["skipped_crops"] == 1


def test_relabel_splits_by_id_in_raster_order():
    a = np.zeros((6, 6, 6), dtype=np.uint32)
    a[0:2, 0:2, 0:2] = 5
    a[2:4, 0:2, 0:2] = 9  # touches the 5s
    a[5, 5, 5] = 5  # a second, separate 5
    labels, n = relabel_components(a)
    assert n == 3
    assert (labels[0, 0, 0], labels[2, 0, 0], labels[5, 5, 5]) == (1, 2, 3)


# ---- semantic blocks -------------------------------------------------------------------------

@pytest.mark.parametrize("block", [1, 4, 7, 128])
def test_blockwise_counts_equal_whole_array(tmp_path, block):
    rng = np.random.default_rng(block)
    shape = (23, 17, 29)
    pred = (rng.random(shape) < 0.3).astype(np.uint8)
    label = rng.integers(0, 15, size=shape, dtype=np.uint8)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=shape, chunks=(5, 7, 6),
                            dtype="uint8", zarr_format=2)
    arr[...] = pred
    whole = count_block(pred > 0, label == 4)
    assert semantic_counts(arr, label, 4, block) == whole
    assert semantic_counts(pred, label, 4, block) == whole


# ---- bad input -------------------------------------------------------------------------------

def _bad_case(tmp_path, breaker):
    crop = Crop("crop001", {"ecs": ECS}, {"ecs": ECS}, ("ecs", "nuc"))
    pred, inv = write_case(tmp_path, [crop])
    breaker(zarr.open_group(str(pred / "predictions.zarr"), mode="a"), inv)
    with pytest.raises(InputError) as err:
        evaluate(pred, inv, SP, tmp_path / "out" / "eval.csv", tmp_path / "out" / "s.json",
                 ONTOLOGY)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return str(err.value)


def _delete(group, name):
    del group[name]


def _reshape(group, name):
    del group[name]
    group.create_array(name, shape=(24, 24, 23), dtype="uint32").attrs["voxel_size"] = list(SP)


@pytest.mark.parametrize(("breaker", "expected"), [
    (lambda g, inv: _delete(g["crop001"], "nuc"), "crop001/nuc: class array missing"),
    (lambda g, inv: _reshape(g["crop001"], "nuc"), "crop001/nuc: prediction shape"),
    (lambda g, inv: _delete(g, "crop001"), "crop001: crop group missing"),
    (lambda g, inv: g["crop001"]["ecs"].attrs.update(voxel_size=[4.0, 8.0, 8.0]),
     "crop001/ecs: voxel_size [4.0, 8.0, 8.0] != configured"),
    (lambda g, inv: inv.__setitem__("w", 25), "label shape"),
])
def test_bad_input_raises_one_line_and_writes_nothing(tmp_path, breaker, expected):
    assert expected in _bad_case(tmp_path, breaker)


def test_missing_store(tmp_path):
    _, inv = write_case(tmp_path, [Crop("crop001", {}, {}, ("ecs",))])
    with pytest.raises(InputError, match="prediction store not found"):
        evaluate(tmp_path / "nope", inv, SP, tmp_path / "e.csv", tmp_path / "s.json", ONTOLOGY)
    assert not (tmp_path / "e.csv").exists()
