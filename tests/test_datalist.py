"""datalist.json structure: parsing, path resolution and every structural check."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NUM_CHANNELS

from cellmapseg.data.datalist import CropEntry, parse_annotated_classes, read_datalist
from cellmapseg.errors import InputError

WHERE = "datalist.json: training[0] (crop c) field 'annotated_classes'"


def entry(name: str = "jrc_cos7-1a_crop234", classes: Any = "0,1,2") -> dict[str, Any]:
    return {
        "image": f"/abs/images/{name}_0000.nii.gz",
        "label": f"/abs/labels/{name}.nii.gz",
        "annotated_classes": classes,
    }


def datalist(**fields: Any) -> dict[str, Any]:
    base = {
        "name": "t", "num_classes": NUM_CHANNELS,
        "training": [entry("jrc_a_crop1"), entry("jrc_b_crop2")],
        "validation": [entry("jrc_a_crop3")],
    }
    return {**base, **fields}


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def problems_of(path: Path, dataroot: str = "") -> list[str]:
    with pytest.raises(InputError) as info:
        read_datalist(path, dataroot, NUM_CHANNELS)
    return str(info.value).splitlines()


# ---------------------------------------------------------------- annotated_classes


def test_parse_annotated_classes_and_mask() -> None:
    classes = parse_annotated_classes("0,1,2,3,7,8", WHERE, NUM_CHANNELS)
    assert classes == (0, 1, 2, 3, 7, 8)
    crop = CropEntry("c", "d", "crop1", "training", Path("/i"), Path("/l"), classes)
    mask = crop.annotation_mask(NUM_CHANNELS)
    assert mask.dtype == np.float32 and mask.shape == (14,)
    assert mask.tolist() == [1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("text", ["", "  "])
def test_parse_empty_annotated_classes(text: str) -> None:
    classes = parse_annotated_classes(text, WHERE, NUM_CHANNELS)
    assert classes == ()
    crop = CropEntry("c", "d", "crop1", "training", Path("/i"), Path("/l"), classes)
    assert not crop.annotation_mask(NUM_CHANNELS).any()


def test_parse_tolerates_spaces() -> None:
    assert parse_annotated_classes(" 13 , 0", WHERE, NUM_CHANNELS) == (13, 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a", "'a' is not an integer"),
        ("1.5", "'1.5' is not an integer"),
        ("0,,1", "'' is not an integer"),
        ("1_0", "'1_0' is not an integer"),
        ("14", "class index 14 is outside 0..13"),
        ("-1", "class index -1 is outside 0..13"),
        ("0,3,0", "class index 0 is listed more than once"),
        (5, "must be a string"),
        ([0, 1], "must be a string"),
        (None, "must be a string"),
    ],
)
def test_parse_rejects(value: Any, expected: str) -> None:
    with pytest.raises(InputError) as info:
        parse_annotated_classes(value, WHERE, NUM_CHANNELS)
    message = str(info.value)
    assert expected in message
    assert message.startswith(WHERE)


# ---------------------------------------------------------------- reading and resolving


def test_read_datalist_entries_in_order(tmp_path: Path) -> None:
    path = write_json(tmp_path / "datalist.json", datalist())
    entries = read_datalist(path, "", NUM_CHANNELS)
    assert [e.name for e in entries] == ["jrc_a_crop1", "jrc_b_crop2", "jrc_a_crop3"]
    assert [e.split for e in entries] == ["training", "training", "validation"]
    first = entries[0]
    assert (first.dataset, first.crop_id) == ("jrc_a", "crop1")
    assert first.image == Path("/abs/images/jrc_a_crop1_0000.nii.gz")
    assert first.label == Path("/abs/labels/jrc_a_crop1.nii.gz")
    assert first.annotated_classes == (0, 1, 2)


def test_crop_name_splits_on_last_crop(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "datalist.json",
        datalist(training=[entry("jrc_cos7-1a_cropped_crop234")]),
    )
    first = read_datalist(path, "", NUM_CHANNELS)[0]
    assert (first.name, first.dataset, first.crop_id) == (
        "jrc_cos7-1a_cropped_crop234", "jrc_cos7-1a_cropped", "crop234",
    )


def test_relative_paths_with_absolute_dataroot(tmp_path: Path) -> None:
    data = datalist()
    data["training"][0]["image"] = "images/jrc_a_crop1_0000.nii.gz"
    path = write_json(tmp_path / "lists" / "datalist.json", data)
    entries = read_datalist(path, str(tmp_path / "data"), NUM_CHANNELS)
    assert entries[0].image == tmp_path / "data" / "images/jrc_a_crop1_0000.nii.gz"
    assert entries[0].label == Path("/abs/labels/jrc_a_crop1.nii.gz")  # absolute stays


def test_relative_dataroot_is_relative_to_datalist_folder(tmp_path: Path) -> None:
    data = datalist()
    data["training"][0]["image"] = "images/jrc_a_crop1_0000.nii.gz"
    path = write_json(tmp_path / "lists" / "datalist.json", data)
    entries = read_datalist(path, "../data", NUM_CHANNELS)
    assert entries[0].image == tmp_path / "lists" / "../data" / "images/jrc_a_crop1_0000.nii.gz"


def test_relative_path_without_dataroot_is_an_error(tmp_path: Path) -> None:
    data = datalist()
    data["validation"][0]["label"] = "labels/jrc_a_crop3.nii.gz"
    path = write_json(tmp_path / "datalist.json", data)
    (line,) = problems_of(path)
    assert str(path) in line
    assert "validation[0] (crop jrc_a_crop3)" in line
    assert "field 'label'" in line and "dataroot" in line


# ---------------------------------------------------------------- file-level problems


def test_missing_datalist(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    (line,) = problems_of(path)
    assert str(path) in line and "not found" in line


def test_datalist_not_json(tmp_path: Path) -> None:
    path = tmp_path / "datalist.json"
    path.write_text('{"training": [}')
    (line,) = problems_of(path)
    assert str(path) in line and "not valid JSON" in line and "line 1" in line


def test_datalist_not_an_object(tmp_path: Path) -> None:
    path = write_json(tmp_path / "datalist.json", [entry()])
    (line,) = problems_of(path)
    assert str(path) in line and "JSON object" in line and "array" in line


# ---------------------------------------------------------------- structural problems


def _mutate(data: dict[str, Any], change: str) -> None:
    """Plant one structural problem (named so the parametrize ids read well)."""
    match change:
        case "missing_training":
            del data["training"]
        case "missing_validation":
            del data["validation"]
        case "split_not_list":
            data["validation"] = {"image": "x"}
        case "split_empty":
            data["training"] = []
        case "entry_not_object":
            data["training"][1] = "jrc_b_crop2"
        case "missing_image" | "missing_label" | "missing_annotated_classes":
            del data["training"][1][change.removeprefix("missing_")]
        case "image_not_string":
            data["training"][1]["image"] = 7
        case "label_not_string":
            data["training"][1]["label"] = ["/abs/labels/jrc_b_crop2.nii.gz"]
        case "annotated_not_string":
            data["training"][1]["annotated_classes"] = [0, 1]
        case "annotated_out_of_range":
            data["training"][1]["annotated_classes"] = "0,14"
        case "bad_image_name":
            data["training"][1]["image"] = "/abs/images/jrc_b_2.png"
        case "image_name_without_crop":
            data["training"][1]["image"] = "/abs/images/jrc_b_0000.nii.gz"
        case "duplicate_within_split":
            data["training"][1] = copy.deepcopy(data["training"][0])
        case "duplicate_across_splits":
            data["validation"][0] = copy.deepcopy(data["training"][1])
        case "num_classes":
            data["num_classes"] = 13
        case _:
            raise AssertionError(change)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("missing_training", ["missing key 'training'"]),
        ("missing_validation", ["missing key 'validation'"]),
        ("split_not_list", ["'validation' must be a list", "object"]),
        ("split_empty", ["'training' is empty"]),
        ("entry_not_object", ["training[1]", "entry must be an object", "string"]),
        ("missing_image", ["training[1]", "missing field 'image'"]),
        ("missing_label", ["training[1] (crop jrc_b_crop2)", "missing field 'label'"]),
        (
            "missing_annotated_classes",
            ["training[1] (crop jrc_b_crop2)", "missing field 'annotated_classes'"],
        ),
        ("image_not_string", ["training[1]", "field 'image'", "integer 7"]),
        ("label_not_string", ["training[1] (crop jrc_b_crop2)", "field 'label'", "array"]),
        (
            "annotated_not_string",
            ["training[1] (crop jrc_b_crop2)", "field 'annotated_classes'", "must be a string"],
        ),
        (
            "annotated_out_of_range",
            ["training[1] (crop jrc_b_crop2)", "field 'annotated_classes'", "14 is outside"],
        ),
        ("bad_image_name", ["training[1]", "field 'image'", "jrc_b_2.png"]),
        ("image_name_without_crop", ["training[1]", "field 'image'", "_crop"]),
        (
            "duplicate_within_split",
            ["training[1] (crop jrc_a_crop1)", "duplicate crop name", "training[0]"],
        ),
        (
            "duplicate_across_splits",
            ["crop jrc_b_crop2", "both training (training[1])", "validation (validation[0])"],
        ),
        ("num_classes", ["field 'num_classes'", "13"]),
    ],
)
def test_structural_problem(tmp_path: Path, change: str, expected: list[str]) -> None:
    data = datalist()
    _mutate(data, change)
    path = write_json(tmp_path / "datalist.json", data)
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: ")
    for part in expected:
        assert part in line, (part, line)


def test_all_structural_problems_reported_together(tmp_path: Path) -> None:
    data = datalist(num_classes=3)
    del data["training"][0]["label"]
    data["training"][1]["annotated_classes"] = "x,0,0"
    data["validation"] = []
    path = write_json(tmp_path / "datalist.json", data)
    lines = problems_of(path)
    assert len(lines) == 5, lines
    assert all(line.startswith(f"{path}: ") for line in lines)
    text = "\n".join(lines)
    for part in ("num_classes", "missing field 'label'", "'x' is not an integer",
                 "class index 0 is listed more than once", "'validation' is empty"):
        assert part in text


def test_duplicate_found_even_when_first_entry_is_invalid(tmp_path: Path) -> None:
    data = datalist()
    data["training"][1] = copy.deepcopy(data["training"][0])
    data["training"][0]["annotated_classes"] = "99"
    path = write_json(tmp_path / "datalist.json", data)
    lines = problems_of(path)
    assert len(lines) == 2
    assert "class index 99" in lines[0] and "duplicate crop name" in lines[1]


def test_num_classes_is_optional(tmp_path: Path) -> None:
    data = datalist()
    del data["num_classes"]
    assert len(read_datalist(write_json(tmp_path / "datalist.json", data), "",
                             NUM_CHANNELS)) == 3
