"""Black EM padding (data.padding_mask): found as runs of 0 reaching the crop's border (or any
0), summarised by the inventory's streamed scan, and kept out of the loss (exactly zero
gradient), validation's counts and the challenge scoring."""

from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from conftest import ATOMIC, ONTOLOGY, make_dataset_files, write_nifti

from cellmapseg.config import from_dict
from cellmapseg.data.batch import prepare_batch
from cellmapseg.data.compact import PAD_LABEL
from cellmapseg.data.inventory import read_inventory, write_inventory
from cellmapseg.data.padding import BorderRuns, Padding, border_runs, crop_padding
from cellmapseg.data.sampling import PatchDataset, collate_patches
from cellmapseg.data.volumes import ListSource, Volume
from cellmapseg.evaluate.score import evaluate
from cellmapseg.models import PartialAnnotationLoss
from cellmapseg.train.validation import score_volume


def brute_force(image: np.ndarray) -> np.ndarray:
    """A zero voxel is padding when the whole line from it to one face is 0 (six directions)."""
    out = np.zeros(image.shape, bool)
    for z, y, x in zip(*np.nonzero(image == 0), strict=True):
        lines = (image[:z + 1, y, x], image[z:, y, x], image[z, :y + 1, x], image[z, y:, x],
                 image[z, y, :x + 1], image[z, y, x:])
        out[z, y, x] = any(not line.any() for line in lines)
    return out


def padded_image(seed: int, shape=(9, 11, 13)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 255, shape).astype(np.uint8)
    image[:2] = 0  # a black slab at one face
    image[:, -3:, :4] = 0  # a black corner block
    image[4, 5, :4] = 0  # a run reaching the x = 0 face
    image[6, 6, 6] = 0  # a zero inside the tissue: not padding
    image[rng.random(shape) < 0.03] = 0  # scattered zeros
    return image


@pytest.mark.parametrize("seed", range(4))
def test_border_runs_find_exactly_the_zero_runs_that_reach_a_face(seed):
    image = padded_image(seed)
    expected = brute_force(image)
    for slab in (1, 2, 13):  # planes of the last axis taken in at a time
        runs = border_runs(image, slab_voxels=image.shape[0] * image.shape[1] * slab)
        full = tuple(slice(0, n) for n in image.shape)
        assert (runs.mask(full) == expected).all()
        # counted whole, by planes, by rows of a plane: the same count
        assert {runs.count(v) for v in (1 << 22, 11 * 13 * 2, 13 * 3, 1)} == {expected.sum()}
    assert not expected[6, 6, 6] and expected[4, 5, 0] and expected[0, 5, 5]
    for box in itertools.islice(itertools.product(*[[slice(1, 5), slice(3, None)]] * 3), 8):
        assert (runs.mask(box) == expected[box]).all()


def test_runs_round_trip_through_their_folder(tmp_path):
    runs = border_runs(padded_image(7))
    runs.save(tmp_path / "crop")
    again = BorderRuns.load(tmp_path / "crop")
    full = tuple(slice(0, n) for n in runs.shape)
    assert (again.mask(full) == runs.mask(full)).all()


def test_the_inventory_scan_keeps_the_runs_of_padded_crops_only(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(1, 255, (16, 20, 24)).astype(np.float32) for _ in range(3)]
    images[1][:, :, :4] = 0
    images[2][:, :, -1] = 0
    images[2][3, 3, 3] = 0
    crops = {i: {"image": img} for i, img in enumerate(images)}
    datalist = make_dataset_files(tmp_path / "data", n_train=2, n_val=1, crops=crops)
    cfg = from_dict({"data": {"datalist": str(datalist)}})
    out = tmp_path / "results" / "inventory.csv"
    write_inventory(cfg, out)
    inv = read_inventory(out)
    assert list(inv["padding_voxels"]) == [0, 16 * 20 * 4, 16 * 20]
    assert list(inv["zero_voxels"]) == [0, 16 * 20 * 4, 16 * 20 + 1]
    assert inv["padding"].iloc[0] == ""
    for i in (1, 2):
        runs = BorderRuns.load(inv["padding"].iloc[i])
        full = tuple(slice(0, n) for n in runs.shape)
        assert (runs.mask(full) == brute_force(images[i])).all()
    assert sorted(p.name for p in (tmp_path / "results" / "padding").iterdir()) == sorted(
        inv["crop"].iloc[1:])
    assert not (tmp_path / "results" / ".padding.partial").exists()


def volume_with_border(padding: Padding | None) -> Volume:
    rng = np.random.default_rng(1)
    image = rng.integers(1, 255, (20, 20, 20)).astype(np.uint8)
    image[:, :, :5] = 0
    label = rng.integers(0, 3, (20, 20, 20)).astype(np.uint8)
    mask = np.zeros(len(ATOMIC), np.float32)
    mask[:2] = 1
    return Volume("crop", image, label, mask, float(image.mean()), float(image.std()), padding)


def test_padded_voxels_are_pad_labels_and_get_exactly_zero_gradient():
    volume = volume_with_border(None)
    volume = Volume(volume.name, volume.image, volume.label, volume.annotation_mask,
                    volume.mean, volume.std, Padding("border", border_runs(volume.image)))
    store_label = volume.label.copy()
    dataset = PatchDataset(ListSource([volume]), (12, 12, 12), 4, 1, seed=3)
    items = [dataset[(0, k)] for k in range(4)]
    assert (volume.label == store_label).all()  # the store's label is never written
    batch = prepare_batch(collate_patches(items), ONTOLOGY.labels)
    black = torch.from_numpy(np.concatenate([it["image"] for it in items]) == 0)
    assert black.any() and (batch.valid[black] == 0).all()  # every black voxel masked here
    assert (batch.valid[~black] == 1).all()  # and nothing else (the crop is larger than ROI)
    labels = np.concatenate([it["label"] for it in items])
    assert (labels[black[:, 0].numpy()] == PAD_LABEL).all()
    logits = torch.randn(batch.target.shape, requires_grad=True)
    PartialAnnotationLoss()(logits, batch.target, batch.annotation_mask, batch.valid).backward()
    grad = logits.grad.abs().sum(dim=1, keepdim=True)
    assert (grad[batch.valid == 0] == 0).all() and (grad[batch.valid == 1] > 0).any()


@pytest.mark.parametrize("mode", ["none", "border", "zeros"])
def test_validation_counts_leave_padding_out(mode):
    volume = volume_with_border(None)
    runs = border_runs(volume.image)
    padding = None if mode == "none" else Padding(mode, runs if mode == "border" else None)
    volume = Volume(volume.name, volume.image, volume.label, volume.annotation_mask,
                    volume.mean, volume.std, padding)
    cfg = from_dict({}).inference
    everywhere = lambda x: torch.full((x.shape[0], len(ATOMIC), *x.shape[2:]), 10.0)  # noqa: E731
    counts = score_volume(everywhere, volume, (8, 8, 8), cfg, torch.device("cpu"),
                          ONTOLOGY.labels)
    kept = volume.label if mode == "none" else volume.label[:, :, 5:]
    for c in range(2):
        positives = int((kept == ONTOLOGY.labels[c]).sum())
        assert tuple(counts[c]) == (positives, kept.size - positives, 0)


def test_scoring_leaves_padding_out_on_both_sides(tmp_path):
    shape = (16, 16, 16)
    image = np.full(shape, 100, np.float32)
    image[:4] = 0  # black border: the network predicted nothing there
    ecs = np.zeros(shape, np.uint8)
    ecs[:, :8] = ONTOLOGY.labels[ATOMIC.index("ecs")]  # the truth has ecs in the border too
    image_path = write_nifti(tmp_path / "img.nii.gz", image)
    label_path = write_nifti(tmp_path / "lab.nii.gz", ecs)
    border_runs(image).save(tmp_path / "runs")
    store = zarr.open_group(str(tmp_path / "pred" / "predictions.zarr"), mode="w", zarr_format=2)
    group = store.require_group("crop001")
    pred = (ecs > 0).astype(np.uint8)
    pred[:4] = 0
    for name in ONTOLOGY.names:
        dtype = "uint32" if ONTOLOGY.is_instance(name) else "uint8"
        arr = group.create_array(name, shape=shape, chunks=(8, 8, 8), dtype=dtype)
        arr[...] = pred if name == "ecs" else 0
        arr.attrs["voxel_size"], arr.attrs["translation"] = [8.0] * 3, [0.0] * 3
    inv = pd.DataFrame([{"crop": "jrc_x_crop001", "crop_id": "crop001", "split": "validation",
                         "image": str(image_path), "label": str(label_path), "d": 16, "h": 16,
                         "w": 16, "annotated_classes": str(ATOMIC.index("ecs")),
                         "padding": str(tmp_path / "runs")}])
    scores = {}
    for mode in ("none", "border", "zeros"):
        summary = evaluate(tmp_path / "pred", inv, (8.0,) * 3, tmp_path / f"{mode}.csv",
                           tmp_path / f"{mode}.json", ONTOLOGY, padding=mode)
        scores[mode] = summary["semantic_mean_iou"]
        row = pd.read_csv(tmp_path / f"{mode}.csv").iloc[0]
        assert row["fn"] == (4 * 8 * 16 if mode == "none" else 0), mode
    assert scores["none"] == pytest.approx(0.75) and scores["border"] == scores["zeros"] == 1.0
    assert json.loads((tmp_path / "border.json").read_text())["crops"] == ["jrc_x_crop001"]


def test_an_unknown_padding_mode_or_a_missing_runs_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="padding mode 'black'"):
        crop_padding("black", "")
    assert crop_padding("border", "") is None and crop_padding("none", "x") is None
    from cellmapseg.errors import InputError

    with pytest.raises(InputError, match="padding runs .*missing.*rerun the inventory rule"):
        crop_padding("border", str(tmp_path / "missing"))


def test_nifti_header_of_a_padded_synthetic_crop(tmp_path):
    """The embedded NIfTI generator gives every third crop black planes at one face."""
    from cellmapseg.synthetic.generate import PADDED_PLANES, generate

    cfg = from_dict({"data": {"synthetic": {"n_train": 3, "n_val": 1, "shape": [16, 16, 16],
                                            "large_shape": [20, 20, 20],
                                            "small_shape": [12, 16, 16]}}})
    datalist = json.loads(generate(cfg.data.synthetic, (8.0,) * 3, tmp_path,
                                   cfg.classes).read_text())
    images = [np.asarray(nib.load(e["image"]).dataobj)
              for e in datalist["training"] + datalist["validation"]]
    black = [bool(brute_force(img)[..., :PADDED_PLANES].all()) for img in images]
    assert any(black) and not all(black)
