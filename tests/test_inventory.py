"""Inventory: one row per crop with shape, dtypes, cache cost, statistics and voxel counts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ATOMIC, ONTOLOGY

from cellmapseg import config
from cellmapseg.data import inventory
from cellmapseg.data.datalist import read_datalist
from cellmapseg.data.inventory import (
    COLUMNS,
    build_inventory,
    columns,
    image_stats,
    label_counts,
    write_inventory,
)
from cellmapseg.errors import InputError

SPACING = (8.0, 8.0, 8.0)
SHAPE = (16, 20, 24)
VOXELS = 16 * 20 * 24


def hand_built() -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued float32 image in [0, 252]; label with 1000 ecs and 500 mito_lum voxels."""
    image = (np.arange(VOXELS) % 253).astype(np.float32).reshape(SHAPE)
    label = np.zeros(VOXELS, np.uint8)
    label[:1000] = 1  # ecs (channel 0)
    label[1000:1500] = 4  # mito_lum (channel 3)
    return image, label.reshape(SHAPE)


def inventory_of(make_dataset: Callable[..., Path], root: Path, **crop: object) -> pd.DataFrame:
    """Inventory of a 1+1 dataset whose first (training) crop is set by `crop`."""
    path = make_dataset(root, n_train=1, n_val=1, crops={0: crop})
    return build_inventory(read_datalist(path, "", ONTOLOGY.num_channels), SPACING, 1e-3,
                           ONTOLOGY)


def test_columns_and_hand_built_values(tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    image, label = hand_built()
    table = inventory_of(make_dataset, tmp_path, image=image, label=label, annotated_classes="0,3")
    assert list(table.columns) == columns(ONTOLOGY)
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert list(table.columns[len(COLUMNS):]) == [f"vox_{n}" for n in ATOMIC]
    assert len(ATOMIC) == 14
    assert list(table["split"]) == ["training", "validation"]
    row = table.iloc[0]
    assert (row["crop"], row["dataset"], row["crop_id"]) == (
        "jrc_test-1a_crop100", "jrc_test-1a", "crop100",
    )
    assert row["image"].endswith("images/jrc_test-1a_crop100_0000.nii.gz")
    assert row["label"].endswith("labels/jrc_test-1a_crop100.nii.gz")
    assert (row["d"], row["h"], row["w"], row["voxels"]) == (*SHAPE, VOXELS)
    assert row["image_dtype"] == "float32"
    assert row["image_uint8_lossless"]
    assert row["compact_image_dtype"] == "uint8"
    assert row["compact_bytes"] == VOXELS * 2  # uint8 image + uint8 label
    assert row["image_mean"] == pytest.approx(image.astype(np.float64).mean(), rel=1e-12)
    assert row["image_std"] == pytest.approx(image.astype(np.float64).std(), rel=1e-12)
    assert (row["annotated_classes"], row["n_annotated"]) == ("0,3", 2)
    counts = {n: row[f"vox_{n}"] for n in ATOMIC}
    assert counts == {n: {"ecs": 1000, "mito_lum": 500}.get(n, 0) for n in ATOMIC}


@pytest.mark.parametrize(
    ("image", "compact", "itemsize", "lossless"),
    [
        (np.linspace(0, 1, VOXELS, dtype=np.float32), "float32", 4, False),
        ((np.arange(VOXELS) % 301).astype(np.float32), "uint16", 2, False),
        ((np.arange(VOXELS) % 200 - 100).astype(np.float32), "int16", 2, False),
        ((np.arange(VOXELS) % 256).astype(np.uint8), "uint8", 1, True),
    ],
    ids=["non-integer", "integer-over-255", "negative-integer", "uint8-on-disk"],
)
def test_compact_dtype_and_bytes(
    tmp_path: Path,
    make_dataset: Callable[..., Path],
    image: np.ndarray,
    compact: str,
    itemsize: int,
    lossless: bool,
) -> None:
    image = image.reshape(SHAPE)
    row = inventory_of(make_dataset, tmp_path, image=image).iloc[0]
    assert row["image_dtype"] == str(image.dtype)
    assert row["compact_image_dtype"] == compact
    assert row["compact_bytes"] == VOXELS * (itemsize + 1)
    assert bool(row["image_uint8_lossless"]) is lossless


def test_unannotated_counts_are_zero_and_empty_warns(
    tmp_path: Path, make_dataset: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cellmapseg.data.inventory"):
        table = inventory_of(make_dataset, tmp_path, annotated_classes="")
    row = table.iloc[0]
    assert (row["annotated_classes"], row["n_annotated"]) == ("", 0)
    assert all(row[f"vox_{n}"] == 0 for n in ATOMIC)
    assert f"crop {row['crop']}: annotated_classes is empty" in caplog.text


def test_trailing_singleton_axis(tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    image, label = hand_built()
    table = inventory_of(make_dataset, tmp_path, image=image[..., None], label=label[..., None])
    assert tuple(table.iloc[0][["d", "h", "w"]]) == SHAPE
    assert table.iloc[0]["vox_ecs"] == 1000


def test_chunked_reductions_match_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk boundaries must not change the statistics (chunk smaller than the crop)."""
    monkeypatch.setattr(inventory, "CHUNK_VOXELS", 1000)
    rng = np.random.default_rng(1)
    image = np.asfortranarray(rng.normal(100.0, 30.0, SHAPE).astype(np.float32))
    label = rng.integers(0, 15, SHAPE).astype(np.uint8)
    stats = image_stats(image)
    assert stats["image_mean"] == pytest.approx(image.mean(dtype=np.float64), rel=1e-12)
    assert stats["image_std"] == pytest.approx(image.std(dtype=np.float64), rel=1e-12)
    assert not stats["image_uint8_lossless"]
    assert (label_counts(label, ONTOLOGY.labels).tolist()
            == np.bincount(label.ravel(), minlength=15).tolist())


def test_worker_pool_matches_serial(tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    entries = read_datalist(make_dataset(tmp_path, n_train=3, n_val=2), "",
                            ONTOLOGY.num_channels)
    serial = build_inventory(entries, SPACING, 1e-3, ONTOLOGY, workers=1)
    pooled = build_inventory(entries, SPACING, 1e-3, ONTOLOGY, workers=2)
    pd.testing.assert_frame_equal(serial, pooled)
    assert list(pooled["crop"]) == [e.name for e in entries]


def _cfg(datalist: Path, **data: object) -> config.Config:
    return config.from_dict({"data": {"datalist": str(datalist), **data}})


def test_write_inventory_csv(tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    datalist = make_dataset(tmp_path / "data", n_train=2, n_val=1, relative=True)
    out = tmp_path / "results" / "inventory.csv"
    table = write_inventory(_cfg(datalist, dataroot="."), out)
    # no temp file left; padding/ holds the runs of crops with zeros on their border
    assert {p.name for p in out.parent.iterdir()} <= {"inventory.csv", "padding"}
    back = pd.read_csv(out, dtype={"annotated_classes": str}, keep_default_na=False)
    assert list(back.columns) == columns(ONTOLOGY)
    assert list(back["crop"]) == list(table["crop"])
    first_image = tmp_path / "data" / "images" / f"{back['crop'][0]}_0000.nii.gz"
    assert back["image"].iloc[0] == str(first_image)  # resolved against the dataroot
    np.testing.assert_allclose(back["image_mean"], table["image_mean"], rtol=1e-12)


def test_write_inventory_writes_nothing_on_failure(
    tmp_path: Path, make_dataset: Callable[..., Path]
) -> None:
    nan_image = np.full(SHAPE, np.nan, np.float32)
    datalist = make_dataset(tmp_path / "data", n_train=2, n_val=1, crops={2: {"image": nan_image}})
    read_datalist(datalist, "", ONTOLOGY.num_channels)[0].label.unlink()
    out = tmp_path / "results" / "inventory.csv"
    with pytest.raises(InputError) as info:
        write_inventory(_cfg(datalist), out)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "file not found" in lines[0] and "non-finite" in lines[1]
    assert not out.parent.exists()


def test_write_inventory_datalist_problem(tmp_path: Path) -> None:
    out = tmp_path / "inventory.csv"
    with pytest.raises(InputError, match="datalist not found"):
        write_inventory(_cfg(tmp_path / "missing.json"), out)
    assert not out.exists()
