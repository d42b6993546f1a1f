"""The embedded synthetic dataset: format, determinism, annotations and EM-like appearance."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from conftest import ATOMIC, NUM_CHANNELS, ONTOLOGY

from cellmapseg.config import SyntheticConfig, from_dict
from cellmapseg.synthetic.generate import generate

SPACING = (8.0, 8.0, 8.0)
LARGE, SMALL = (40, 44, 48), (12, 24, 28)
MEMBRANES = [v for n, v in zip(ATOMIC, ONTOLOGY.labels, strict=True)
             if n == "pm" or n.endswith("_mem")]
CHANNEL = {v: c for c, v in enumerate(ONTOLOGY.labels)}  # label value -> channel


def small_config(**overrides: Any) -> SyntheticConfig:
    synthetic = {
        "seed": 3, "n_datasets": 2, "n_train": 5, "n_val": 2, "shape": [32, 32, 32],
        "shape_jitter": 0.2, "large_shape": list(LARGE), "small_shape": list(SMALL),
        **overrides,
    }
    return from_dict({"data": {"synthetic": synthetic}}).data.synthetic


def load(path: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img


def entries(datalist: dict[str, Any]) -> list[dict[str, str]]:
    return datalist["training"] + datalist["validation"]


def annotated(entry: dict[str, str]) -> set[int]:
    return {int(c) for c in entry["annotated_classes"].split(",") if c}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = generate(small_config(), SPACING, tmp_path_factory.mktemp("synthetic"), ONTOLOGY)
    datalist = json.loads(path.read_text())
    crops = [(e, load(e["image"])[0], load(e["label"])[0]) for e in entries(datalist)]
    return {"path": path, "datalist": datalist, "crops": crops}


def arrays(out_dir: Path, cfg: SyntheticConfig) -> list[np.ndarray]:
    datalist = json.loads(generate(cfg, SPACING, out_dir, ONTOLOGY).read_text())
    return [load(e[k])[0] for e in entries(datalist) for k in ("image", "label")]


def test_same_seed_gives_identical_arrays_and_another_seed_differs(tmp_path: Path) -> None:
    cfg = small_config(n_train=3, n_val=1, shape=[24, 24, 24], large_shape=[28, 28, 30],
                       small_shape=[12, 20, 20])
    first, again = arrays(tmp_path / "a", cfg), arrays(tmp_path / "b", cfg)
    other = arrays(tmp_path / "c", dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert all(
        np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(first, again, strict=True)
    )
    assert any(x.shape != y.shape or not np.array_equal(x, y)
               for x, y in zip(first, other, strict=True))


def test_images_are_integer_float32_in_range_and_labels_uint8_class_values(dataset) -> None:
    for _, image, label in dataset["crops"]:
        assert image.dtype == np.float32
        assert np.array_equal(image, np.round(image))
        assert image.min() >= 0 and image.max() <= 252
        assert label.dtype == np.uint8
        assert set(np.unique(label)) <= {0, *ONTOLOGY.labels}
        assert image.shape == label.shape


def test_header_zooms_equal_the_spacing(dataset) -> None:
    for entry in entries(dataset["datalist"])[:3]:
        for key in ("image", "label"):
            _, img = load(entry[key])
            assert img.header.get_zooms() == pytest.approx(SPACING)
            assert np.allclose(img.affine, np.diag([*SPACING, 1.0]))


def test_files_follow_the_cellmap_naming_pattern(dataset) -> None:
    crop_ids = []
    for entry in entries(dataset["datalist"]):
        image, label = Path(entry["image"]), Path(entry["label"])
        match = re.fullmatch(r"(jrc_synth-\d+)_(crop\d{3})_0000\.nii\.gz", image.name)
        assert match, image.name
        assert image.parent.name == "images" and label.parent.name == "labels"
        assert label.name == f"{match[1]}_{match[2]}.nii.gz"
        crop_ids.append(match[2])
    assert len(set(crop_ids)) == len(crop_ids)


def test_datalist_has_monai_format_with_absolute_paths(dataset) -> None:
    datalist = dataset["datalist"]
    assert datalist["modality"] == "EM" and datalist["sigmoid"] is True
    assert datalist["num_classes"] == NUM_CHANNELS
    assert datalist["class_names"][0] == {"name": "ecs", "index": [1]}
    assert [c["name"] for c in datalist["class_names"]] == list(ATOMIC)
    assert [c["index"] for c in datalist["class_names"]] == [[v] for v in ONTOLOGY.labels]
    assert {"name", "description", "training", "validation"} <= set(datalist)
    for entry in entries(datalist):
        assert set(entry) == {"image", "label", "annotated_classes"}
        for key in ("image", "label"):
            assert Path(entry[key]).is_absolute() and Path(entry[key]).is_file()
        channels = [int(c) for c in entry["annotated_classes"].split(",") if c]
        assert channels == sorted(set(channels))
        assert all(0 <= c < NUM_CHANNELS for c in channels)


def test_split_sizes_and_datasets_follow_the_config(dataset) -> None:
    datalist = dataset["datalist"]
    assert len(datalist["training"]) == 5 and len(datalist["validation"]) == 2
    names = {Path(e["image"]).name.split("_crop")[0] for e in entries(datalist)}
    assert names == {"jrc_synth-1", "jrc_synth-2"}


def test_exactly_one_training_crop_is_unannotated(dataset) -> None:
    datalist = dataset["datalist"]
    empty = [e for e in datalist["training"] if e["annotated_classes"] == ""]
    assert len(empty) == 1
    assert all(e["annotated_classes"] for e in datalist["validation"])
    assert not load(empty[0]["label"])[0].any()


def test_one_large_and_one_small_training_crop(dataset) -> None:
    shapes = [image.shape for entry, image, _ in dataset["crops"]
              if entry in dataset["datalist"]["training"]]
    assert shapes.count(LARGE) == 1 and shapes.count(SMALL) == 1
    others = [s for s in shapes if s not in (LARGE, SMALL)]
    assert all(np.prod(s) < np.prod(LARGE) for s in others)
    assert all(min(s) > min(SMALL) for s in others)


def test_unannotated_classes_have_no_voxels(dataset) -> None:
    for entry, _, label in dataset["crops"]:
        present = {CHANNEL[int(v)] for v in np.unique(label) if v}
        assert present <= annotated(entry), entry["label"]


def test_every_class_is_annotated_in_training_and_in_validation(dataset) -> None:
    for split in ("training", "validation"):
        covered = set().union(*(annotated(e) for e in dataset["datalist"][split]))
        assert covered == set(range(NUM_CHANNELS)), split


def test_mito_ribo_is_annotated_only_with_mito(dataset) -> None:
    mito = {ONTOLOGY.channel("mito_mem"), ONTOLOGY.channel("mito_lum")}
    for entry in entries(dataset["datalist"]):
        if ONTOLOGY.channel("mito_ribo") in annotated(entry):
            assert mito <= annotated(entry)


def test_annotated_classes_have_voxels(dataset) -> None:
    for entry, _, label in dataset["crops"]:
        counts = np.bincount(label.ravel(), minlength=ONTOLOGY.max_label + 1)
        missing = [ATOMIC[c] for c in annotated(entry) if counts[ONTOLOGY.labels[c]] == 0]
        assert not missing, (entry["label"], missing)


def test_membrane_and_lumen_annotations_come_in_pairs(dataset) -> None:
    for entry in entries(dataset["datalist"]):
        names = {ATOMIC[c] for c in annotated(entry)}
        for organelle in ("mito", "golgi", "ves", "endo", "er"):
            assert (f"{organelle}_mem" in names) == (f"{organelle}_lum" in names)


def test_datasets_differ_in_brightness(dataset) -> None:
    medians = {}
    for entry, image, _ in dataset["crops"]:
        name = Path(entry["image"]).name.split("_crop")[0]
        medians.setdefault(name, []).append(image.ravel())
    one, two = (float(np.median(np.concatenate(v))) for v in medians.values())
    assert abs(one - two) > 8


def test_membranes_are_darker_than_cytoplasm(dataset) -> None:
    membrane, rest = [], []
    for _, image, label in dataset["crops"]:
        membrane.append(image[np.isin(label, MEMBRANES)])
        rest.append(image[label == 0])
    assert np.concatenate(membrane).mean() < np.concatenate(rest).mean() - 30


def test_datalist_is_written_last(tmp_path: Path) -> None:
    cfg = small_config(n_train=3, n_val=1, shape=[16, 16, 16], large_shape=[20, 20, 20],
                       small_shape=[8, 12, 12])
    path = generate(cfg, SPACING, tmp_path, ONTOLOGY)
    newest = max(p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz"))
    assert path.stat().st_mtime_ns >= newest
    assert not list(tmp_path.rglob(".*.tmp"))
