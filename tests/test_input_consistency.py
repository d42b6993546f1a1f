"""Image and label must agree beyond shape and spacing: the same voxel -> world map (origin and
axis directions), and no label voxels of classes the crop does not list as annotated."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import ONTOLOGY, SHAPE, SPACING

from cellmapseg.config import from_dict
from cellmapseg.data.checks import validate_crops
from cellmapseg.data.datalist import CropEntry, read_datalist
from cellmapseg.data.inventory import write_inventory
from cellmapseg.errors import InputError

TOL = 1e-3
BAD = 1  # the crop a test breaks (training[1]); the others stay valid
BASE = np.diag([*SPACING, 1.0])  # conftest.write_nifti's affine


def entries_of(make_dataset: Callable[..., Path], root: Path, **kw: object) -> list[CropEntry]:
    return read_datalist(make_dataset(root, n_train=2, n_val=1, **kw), "",
                         ONTOLOGY.num_channels)


def set_affine(path: Path, affine: np.ndarray) -> None:
    """Rewrite a NIfTI file with the same voxels under another affine."""
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)


def problems(entries: list[CropEntry]) -> list[str]:
    with pytest.raises(InputError) as info:
        validate_crops(entries, SPACING, TOL, ONTOLOGY.labels)
    return str(info.value).splitlines()


# ---------------------------------------------------------------- affines


def test_image_origin_shifted_against_label_is_refused(
    tmp_path: Path, make_dataset: Callable[..., Path]
) -> None:
    entries = entries_of(make_dataset, tmp_path)
    shifted = BASE.copy()
    shifted[0, 3] = 8.0  # one voxel along the first axis
    set_affine(entries[BAD].image, shifted)
    (line,) = problems(entries)
    assert line.startswith(f"crop {entries[BAD].name}: image/label affine mismatch"), line
    assert str(entries[BAD].image) in line and str(entries[BAD].label) in line
    assert "origin [8, 0, 0] vs [0, 0, 0] nm" in line
    assert "orientation" not in line


@pytest.mark.parametrize(
    ("columns", "codes"),
    [((0, 1, 2), "LAS vs RAS"), ((1, 0, 2), "ARS vs RAS")],
    ids=["first-axis-flipped", "axes-permuted"],
)
def test_image_axes_flipped_or_permuted_against_label_is_refused(
    tmp_path: Path, make_dataset: Callable[..., Path], columns: tuple[int, ...], codes: str
) -> None:
    entries = entries_of(make_dataset, tmp_path)
    turned = BASE.copy()
    turned[:3, :3] = BASE[:3, list(columns)]
    if columns == (0, 1, 2):
        turned[0, 0] = -SPACING[0]
    set_affine(entries[BAD].image, turned)
    (line,) = problems(entries)
    assert line.startswith(f"crop {entries[BAD].name}: image/label affine mismatch"), line
    assert str(entries[BAD].image) in line and str(entries[BAD].label) in line
    assert f"orientation differs (axes {codes})" in line
    assert "origin" not in line


@pytest.mark.parametrize("jitter", [0.0, 1e-4], ids=["identical", "within-tolerance"])
def test_matching_affines_with_an_origin_pass(
    tmp_path: Path, make_dataset: Callable[..., Path], jitter: float
) -> None:
    """The same non-trivial affine (flipped axis, world origin) on both files is accepted,
    also with float noise far below a voxel."""
    entries = entries_of(make_dataset, tmp_path)
    moved = BASE.copy()
    moved[1, 1] = -SPACING[1]
    moved[:3, 3] = (800.0, 1600.0, 2400.0)
    set_affine(entries[BAD].label, moved)
    moved[:3, 3] += jitter
    set_affine(entries[BAD].image, moved)
    assert validate_crops(entries, SPACING, TOL, ONTOLOGY.labels) == []


# ---------------------------------------------------------------- unannotated classes


def unlisted_dataset(make_dataset: Callable[..., Path], root: Path) -> Path:
    """Crop training[1] annotates ecs and mito_lum; its label also holds 37 nuc voxels."""
    label = np.zeros(SHAPE, np.uint8)
    label.flat[:1000] = ONTOLOGY.labels[ONTOLOGY.channel("ecs")]
    label.flat[1000:1037] = ONTOLOGY.labels[ONTOLOGY.channel("nuc")]
    annotated = f"{ONTOLOGY.channel('ecs')},{ONTOLOGY.channel('mito_lum')}"
    crop = {"label": label, "annotated_classes": annotated}
    return make_dataset(root / "data", n_train=2, n_val=1, crops={BAD: crop})


def test_unlisted_class_voxels_warn_with_their_count(
    tmp_path: Path, make_dataset: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    datalist = unlisted_dataset(make_dataset, tmp_path)
    out = tmp_path / "inventory.csv"
    with caplog.at_level(logging.WARNING, logger="cellmapseg.data.inventory"):
        table = write_inventory(from_dict({"data": {"datalist": str(datalist)}}), out)
    (line,) = [r.getMessage() for r in caplog.records if "annotated_classes" in r.getMessage()]
    name = table["crop"].iloc[BAD]
    assert line.startswith(f"crop {name}: label {table['label'].iloc[BAD]}: "), line
    assert "nuc (37 voxels)" in line and "data.strict_annotations" in line
    assert "ecs" not in line  # annotated classes are not reported
    assert out.is_file() and table["vox_nuc"].iloc[BAD] == 37


def test_unlisted_class_voxels_are_an_error_when_strict(
    tmp_path: Path, make_dataset: Callable[..., Path]
) -> None:
    datalist = unlisted_dataset(make_dataset, tmp_path)
    name = read_datalist(datalist, "", ONTOLOGY.num_channels)[BAD].name
    out = tmp_path / "results" / "inventory.csv"
    cfg = from_dict({"data": {"datalist": str(datalist), "strict_annotations": True}})
    with pytest.raises(InputError) as info:
        write_inventory(cfg, out)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"crop {name}: label "), line
    assert "nuc (37 voxels)" in line
    assert not out.parent.exists()
