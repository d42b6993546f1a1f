"""NIfTI reading and crop validation: every problem named with its crop, field and file."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from conftest import ONTOLOGY

from cellmapseg.data import checks
from cellmapseg.data.checks import validate_crops
from cellmapseg.data.datalist import CropEntry, read_datalist
from cellmapseg.data.nifti import load_array, read_header
from cellmapseg.errors import InputError

SPACING = (8.0, 8.0, 8.0)
TOL = 1e-3
SHAPE = (16, 20, 24)
BAD = 1  # index of the crop a test breaks (training[1]); the other crops stay valid
LABELS = ONTOLOGY.labels  # 1..14
NOT_LABELS = "are not label values of the configured classes (0 and 1..14; see classes.atomic)"


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def entries_of(make_dataset: Callable[..., Path], root: Path, **kw: Any) -> list[CropEntry]:
    return read_datalist(make_dataset(root, n_train=2, n_val=1, **kw), "",
                         ONTOLOGY.num_channels)


def problems(entries: list[CropEntry]) -> list[str]:
    with pytest.raises(InputError) as info:
        validate_crops(entries, SPACING, TOL, LABELS)
    return str(info.value).splitlines()


def one_problem(entries: list[CropEntry], field: str) -> str:
    """The single problem line; it must name the broken crop, the field and its file."""
    (line,) = problems(entries)
    bad = entries[BAD]
    assert line.startswith(f"crop {bad.name}: {field} {getattr(bad, field)}: "), line
    return line


# ---------------------------------------------------------------- nifti.py


def test_read_header_fields(tmp_path: Path, nifti_writer: Callable[..., Path]) -> None:
    path = nifti_writer(tmp_path / "a.nii.gz", np.zeros(SHAPE, np.int16), (8.0, 8.0, 16.0))
    header = read_header(path)
    assert header.shape == SHAPE and header.ndim == 3 and header.shape3d == SHAPE
    assert header.dtype == np.int16
    assert header.spacing == (8.0, 8.0, 16.0)
    assert not header.scaled


def test_load_array_keeps_on_disk_dtype(tmp_path: Path, nifti_writer: Callable) -> None:
    data = np.arange(np.prod(SHAPE), dtype=np.uint8).reshape(SHAPE)
    path = nifti_writer(tmp_path / "a.nii.gz", data)
    loaded = load_array(path)
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, data)
    assert load_array(path, np.float32).dtype == np.float32


def test_truncated_gzip_header_reads_but_data_fails(
    tmp_path: Path, nifti_writer: Callable
) -> None:
    """A .nii.gz cut to 60% keeps a readable header: the damage shows only on reading data."""
    rng = np.random.default_rng(0)
    path = nifti_writer(tmp_path / "a.nii.gz", rng.integers(0, 253, SHAPE).astype(np.float32))
    truncate(path, 0.6)
    assert read_header(path).shape == SHAPE
    with pytest.raises(InputError, match="corrupt or truncated gzip data") as info:
        load_array(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, EOFError)


def test_truncated_uncompressed_data(tmp_path: Path, nifti_writer: Callable) -> None:
    path = nifti_writer(tmp_path / "a.nii", np.ones(SHAPE, np.float32))
    truncate(path, 0.6)
    assert read_header(path).shape == SHAPE
    with pytest.raises(InputError, match="truncated or unreadable data") as info:
        load_array(path)
    assert isinstance(info.value.__cause__, OSError)


def test_gzip_crc_is_checked(tmp_path: Path, nifti_writer: Callable) -> None:
    """A wrong CRC goes unnoticed by nibabel (it stops before the trailer); load_array checks it."""
    path = nifti_writer(tmp_path / "a.nii.gz", np.ones(SHAPE, np.uint8))
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # first byte of the CRC32 in the gzip trailer
    path.write_bytes(bytes(data))
    assert np.asanyarray(nib.load(path).dataobj).shape == SHAPE  # nibabel alone: no error
    with pytest.raises(InputError, match="corrupt or truncated gzip data") as info:
        load_array(path)
    assert isinstance(info.value.__cause__, gzip.BadGzipFile)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "file not found"),
        (b"", "corrupt or truncated gzip header (empty file)"),
        (b"not gzip at all" * 40, "corrupt or truncated gzip header"),
        (gzip.compress(b"\0" * 200), "corrupt or truncated gzip header (only 200 bytes"),
        ("directory", "not a readable NIfTI file"),
    ],
    ids=["missing", "empty", "not-gzip", "short-header", "directory"],
)
def test_read_header_errors(tmp_path: Path, content: Any, expected: str) -> None:
    path = tmp_path / "a.nii.gz"
    if content == "directory":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    for reader in (read_header, load_array):
        with pytest.raises(InputError) as info:
            reader(path)
        assert str(info.value).startswith(f"{path}: ")
        assert expected in str(info.value)
        assert "\n" not in str(info.value)
        assert info.value.__cause__ is not None


def test_corrupt_deflate_stream(tmp_path: Path, nifti_writer: Callable) -> None:
    """Garbled compressed bytes after the header surface as a gzip data error."""
    rng = np.random.default_rng(0)
    path = nifti_writer(tmp_path / "a.nii.gz", rng.integers(0, 253, SHAPE).astype(np.float32))
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = b"\xff" * (len(data) - len(data) // 2)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt or truncated gzip data") as info:
        load_array(path)
    assert isinstance(info.value.__cause__, EOFError | zlib.error | gzip.BadGzipFile)


# ---------------------------------------------------------------- clean data and warnings


def test_clean_dataset_passes(tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    assert validate_crops(entries_of(make_dataset, tmp_path), SPACING, TOL, LABELS) == []


def test_empty_annotated_classes_is_a_warning(
    tmp_path: Path, make_dataset: Callable[..., Path]
) -> None:
    entries = entries_of(make_dataset, tmp_path, crops={BAD: {"annotated_classes": ""}})
    assert not entries[BAD].annotation_mask(ONTOLOGY.num_channels).any()
    warnings = validate_crops(entries, SPACING, TOL, LABELS)
    name = entries[BAD].name
    assert warnings == [f"crop {name}: annotated_classes is empty; it adds no gradient"]


def test_mismatched_label_name_is_a_warning(
    tmp_path: Path, make_dataset: Callable[..., Path]
) -> None:
    entries = entries_of(make_dataset, tmp_path)
    other = entries[0].label
    swapped = CropEntry(**{**entries[BAD].__dict__, "label": other})
    (warning,) = validate_crops([swapped], SPACING, TOL, LABELS)
    assert swapped.name in warning and other.name in warning


def test_trailing_singleton_axis_is_accepted(
    tmp_path: Path, make_dataset: Callable[..., Path]
) -> None:
    image = np.zeros((*SHAPE, 1), np.float32)
    label = np.ones((*SHAPE, 1), np.uint8)
    entries = entries_of(make_dataset, tmp_path, crops={BAD: {"image": image, "label": label}})
    assert validate_crops(entries, SPACING, TOL, LABELS) == []


def test_spacing_within_tolerance_is_accepted(
    tmp_path: Path, make_dataset: Callable[..., Path]
) -> None:
    entries = entries_of(make_dataset, tmp_path, crops={BAD: {"image_spacing": (8.004, 8, 8)}})
    assert validate_crops(entries, SPACING, TOL, LABELS) == []


# ---------------------------------------------------------------- pass (a): headers


def _break_file(entry: CropEntry, field: str, how: str) -> None:
    path: Path = getattr(entry, field)
    match how:
        case "missing":
            path.unlink()
        case "garbage":
            path.write_bytes(b"this is not a NIfTI file" * 50)
        case "gzip-header":
            truncate(path, 0.02)
        case _:
            raise AssertionError(how)


@pytest.mark.parametrize("field", ["image", "label"])
@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("missing", "file not found"),
        ("garbage", "corrupt or truncated gzip header"),
        ("gzip-header", "corrupt or truncated gzip header"),
    ],
)
def test_unreadable_file(
    tmp_path: Path, make_dataset: Callable[..., Path], field: str, how: str, expected: str
) -> None:
    entries = entries_of(make_dataset, tmp_path)
    _break_file(entries[BAD], field, how)
    assert expected in one_problem(entries, field)


@pytest.mark.parametrize(
    ("crop", "field", "expected"),
    [
        ({"image": np.zeros(SHAPE[:2], np.float32), "label": np.zeros(SHAPE, np.uint8)},
         "image", "must be a 3D volume, got 2D"),
        ({"label": np.zeros(SHAPE[:2], np.uint8)}, "label", "must be a 3D volume, got 2D"),
        ({"image": np.zeros((*SHAPE, 2), np.float32), "label": np.zeros(SHAPE, np.uint8)},
         "image", "must be a 3D volume, got 4D"),
        ({"label": np.zeros((*SHAPE, 3), np.uint8)}, "label", "must be a 3D volume, got 4D"),
        ({"image_spacing": (8.0, 8.0, 16.0)}, "image", "spacing (8.0, 8.0, 16.0) differs"),
        ({"label_spacing": (4.0, 4.0, 4.0)}, "label", "spacing (4.0, 4.0, 4.0) differs"),
        ({"label": np.zeros(SHAPE, np.float32)}, "label", "dtype float32 is not an integer"),
        ({"image": np.zeros(SHAPE, np.complex64)}, "image", "complex64 is not a real-valued"),
    ],
    ids=["2d-image", "2d-label", "4d-image", "4d-label", "image-spacing", "label-spacing",
         "float-label", "complex-image"],
)
def test_header_problem(
    tmp_path: Path, make_dataset: Callable[..., Path], crop: dict, field: str, expected: str
) -> None:
    entries = entries_of(make_dataset, tmp_path, crops={BAD: crop})
    assert expected in one_problem(entries, field)


def test_shape_mismatch(tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    crop = {"image": np.zeros(SHAPE, np.float32), "label": np.zeros((16, 20, 20), np.uint8)}
    entries = entries_of(make_dataset, tmp_path, crops={BAD: crop})
    (line,) = problems(entries)
    bad = entries[BAD]
    assert line.startswith(f"crop {bad.name}: image/label shape mismatch")
    assert str(bad.image) in line and str(bad.label) in line
    assert "(16, 20, 24)" in line and "(16, 20, 20)" in line


def test_scaled_label_is_rejected(tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    entries = entries_of(make_dataset, tmp_path)
    # nibabel drops scaling it does not need on save, so patch scl_slope in the raw header.
    raw = bytearray(gzip.decompress(entries[BAD].label.read_bytes()))
    raw[112:116] = np.float32(2.0).tobytes()
    entries[BAD].label.write_bytes(gzip.compress(bytes(raw)))
    assert read_header(entries[BAD].label).scaled
    assert "scl_slope" in one_problem(entries, "label")


def test_header_pass_skips_data_of_failed_crops(
    tmp_path: Path, make_dataset: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crop that fails on its header is never read: its garbage data goes unreported."""
    entries = entries_of(make_dataset, tmp_path, crops={BAD: {"label": np.ones(SHAPE, np.float32)}})
    truncate(entries[BAD].label, 0.6)  # header intact, data unreadable
    loaded: list[Path] = []
    real_scans = checks.scan_image, checks.scan_label
    monkeypatch.setattr(checks, "scan_image", lambda p: loaded.append(Path(p)) or real_scans[0](p))
    monkeypatch.setattr(checks, "scan_label",
                        lambda p, labels: loaded.append(Path(p)) or real_scans[1](p, labels))
    line = one_problem(entries, "label")
    assert "not an integer" in line and "truncated" not in line
    assert entries[BAD].image not in loaded and entries[BAD].label not in loaded
    assert {entries[0].image, entries[0].label, entries[2].image} <= set(loaded)


# ---------------------------------------------------------------- pass (b): voxel data


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (np.full(SHAPE, 15, np.uint8), f"values 15 {NOT_LABELS}"),
        (np.full(SHAPE, 255, np.uint8), f"values 255 {NOT_LABELS}"),
        (np.full(SHAPE, -1, np.int16), f"values -1 {NOT_LABELS}"),
    ],
)
def test_label_values_out_of_range(
    tmp_path: Path, make_dataset: Callable[..., Path], label: np.ndarray, expected: str
) -> None:
    label = label.copy()
    label[0, 0, 0] = 3  # valid values are not listed
    entries = entries_of(make_dataset, tmp_path, crops={BAD: {"label": label}})
    assert expected in one_problem(entries, "label")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_image(
    tmp_path: Path, make_dataset: Callable[..., Path], value: float
) -> None:
    image = np.ones(SHAPE, np.float32)
    image[1, 2, 3] = image[4, 5, 6] = value
    entries = entries_of(make_dataset, tmp_path, crops={BAD: {"image": image}})
    assert "2 non-finite voxels" in one_problem(entries, "image")


@pytest.mark.parametrize("field", ["image", "label"])
def test_truncated_gzip_data(
    tmp_path: Path, make_dataset: Callable[..., Path], field: str
) -> None:
    """Cut to 60%: pass (a) passes (header intact); pass (b) reports the truncated stream."""
    entries = entries_of(make_dataset, tmp_path)
    truncate(getattr(entries[BAD], field), 0.6)
    found, _ = checks.header_problems(entries[BAD], SPACING, TOL)
    assert found == []
    line = one_problem(entries, field)
    assert "corrupt or truncated gzip data" in line
    assert "Compressed file ended before the end-of-stream marker" in line


def test_all_problems_reported_together(
    tmp_path: Path, make_dataset: Callable[..., Path]
) -> None:
    nan_image = np.full(SHAPE, np.nan, np.float32)
    crops = {0: {"image_spacing": (9.0, 8.0, 8.0)}, 1: {"image": nan_image},
             2: {"label": np.full(SHAPE, 20, np.uint8)}}
    entries = entries_of(make_dataset, tmp_path, crops=crops)
    entries[0].label.unlink()
    lines = problems(entries)
    assert len(lines) == 4, lines
    named = [line.split(":")[0] for line in lines]
    assert named == [f"crop {entries[i].name}" for i in (0, 0, 1, 2)]
