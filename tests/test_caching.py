"""Caching strategies A-E: same volumes from every strategy, a shared store that is reused,
rebuilt when damaged and never copied into workers, and clear failures."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from cellmapseg.config import from_dict
from cellmapseg.data import store as store_mod
from cellmapseg.data.caching import MixedSource, open_source
from cellmapseg.data.inventory import read_inventory
from cellmapseg.data.loading import load_volume
from cellmapseg.data.store import StoreSource, ensure_store, is_complete
from cellmapseg.errors import InputError


@pytest.fixture(scope="module")
def inventory(synthetic_inventory):
    return read_inventory(synthetic_inventory)


def caching(tmp_path, **extra):
    raw = {"store_dir": str(tmp_path / "shm"), "disk_dir": str(tmp_path / "disk"), **extra}
    return from_dict({"caching": raw}).caching


@pytest.mark.parametrize("strategy", ["A", "B", "C", "D"])
def test_every_strategy_serves_the_compact_volumes(strategy, inventory, tmp_path):
    rows = inventory.head(4)
    threshold_mb = float(np.median(rows["compact_bytes"])) / 2**20  # D: some in RAM, some not
    source = open_source(strategy, rows, caching(tmp_path, d_threshold_mb=threshold_mb))
    assert len(source) == 4
    for i, row in enumerate(rows.to_dict("records")):
        got, want = source.get(i), load_volume(row)
        assert got.name == want.name
        assert got.image.dtype == np.uint8 and got.label.dtype == np.uint8
        np.testing.assert_array_equal(got.image, want.image)
        np.testing.assert_array_equal(got.label, want.label)
        np.testing.assert_array_equal(got.annotation_mask, want.annotation_mask)
        assert (got.mean, got.std) == pytest.approx((want.mean, want.std))
    if strategy == "D":
        kinds = {kind for kind, _ in source._order}
        assert kinds == {"ram", "disk"}
        assert isinstance(source, MixedSource)


def test_store_volumes_are_read_only_views(inventory, tmp_path):
    source = open_source("B", inventory.head(2), caching(tmp_path))
    vol = source.get(0)
    assert not vol.image.flags.writeable and not vol.label.flags.writeable
    with pytest.raises(ValueError):
        vol.image[0, 0, 0] = 1


def test_training_and_validation_sources_share_one_store(inventory, tmp_path):
    cfg = caching(tmp_path)
    train = open_source("B", inventory[inventory.split == "training"], cfg, store_rows=inventory)
    val = open_source("B", inventory[inventory.split == "validation"], cfg, store_rows=inventory)
    assert train.path == val.path
    assert len(os.listdir(tmp_path / "shm")) == 2  # one store folder and its lock file


def test_store_is_reused_on_a_second_run(inventory, tmp_path):
    rows = inventory.head(3).to_dict("records")
    first = ensure_store(tmp_path, rows)
    mtime = (first.path / "data.bin").stat().st_mtime_ns
    second = ensure_store(tmp_path, rows)
    assert not first.reused and second.reused and second.path == first.path
    assert (first.path / "data.bin").stat().st_mtime_ns == mtime


def test_truncated_store_is_rebuilt(inventory, tmp_path):
    rows = inventory.head(3).to_dict("records")
    info = ensure_store(tmp_path, rows)
    data = info.path / "data.bin"
    size = data.stat().st_size
    with open(data, "r+b") as fh:
        fh.truncate(size // 2)
    assert not is_complete(info.path)
    with pytest.raises(InputError, match="incomplete"):
        StoreSource(info.path)
    again = ensure_store(tmp_path, rows)
    assert not again.reused and data.stat().st_size == size
    np.testing.assert_array_equal(StoreSource(again.path).get(2).label,
                                  load_volume(rows[2]).label)


def test_store_without_index_is_rebuilt(inventory, tmp_path):
    rows = inventory.head(2).to_dict("records")
    info = ensure_store(tmp_path, rows)
    (info.path / "index.json").unlink()  # a build killed before its last step
    assert not ensure_store(tmp_path, rows).reused


def test_a_parallel_build_writes_the_same_bytes_as_a_serial_one(inventory, tmp_path):
    rows = inventory.head(5).to_dict("records")
    serial = ensure_store(tmp_path / "one", rows, workers=1)
    pooled = ensure_store(tmp_path / "two", rows, workers=3)
    assert (serial.path / "data.bin").read_bytes() == (pooled.path / "data.bin").read_bytes()
    source = StoreSource(pooled.path)
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(source.get(i).image, load_volume(row).image)


def test_a_new_store_removes_stale_ones_but_never_one_in_use(inventory, tmp_path, caplog):
    caplog.set_level("INFO", logger="cellmapseg.data.store")
    old = ensure_store(tmp_path, inventory.head(2).to_dict("records"))
    held = ensure_store(tmp_path, inventory.head(3).to_dict("records"))
    assert not old.path.exists()
    in_use = StoreSource(held.path)  # a running job maps this one
    new = ensure_store(tmp_path, inventory.head(4).to_dict("records"))
    assert held.path.is_dir() and new.path.is_dir()
    assert f"removed the stale store {old.path}" in caplog.text
    assert f"store {held.path} is in use by another process: kept" in caplog.text
    del in_use  # its process lets go: the next build removes it
    ensure_store(tmp_path, inventory.head(1).to_dict("records"))
    assert not held.path.exists() and not new.path.exists()


def test_changed_crops_get_a_different_store(inventory, tmp_path):
    a = ensure_store(tmp_path, inventory.head(2).to_dict("records"))
    b = ensure_store(tmp_path, inventory.head(3).to_dict("records"))
    assert a.path != b.path


def test_store_source_pickles_without_its_data(inventory, tmp_path):
    """DataLoader workers receive the source by pickle: it must carry the path, not the bytes."""
    source = open_source("B", inventory.head(4), caching(tmp_path))
    source.get(0)  # mapped in this process
    blob = pickle.dumps(source)
    assert len(blob) < 10_000 < int(inventory.head(4)["compact_bytes"].sum())
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.get(3).image, source.get(3).image)


def test_a_full_store_folder_fails_clearly_and_leaves_nothing(inventory, tmp_path, monkeypatch):
    real = store_mod.shutil.disk_usage

    def tiny(path):
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1000, 1000)

    monkeypatch.setattr(store_mod.shutil, "disk_usage", tiny)
    with pytest.raises(InputError, match=r"has 1000 bytes free but the store needs"):
        ensure_store(tmp_path / "shm", inventory.head(2).to_dict("records"))
    assert [p.name for p in (tmp_path / "shm").iterdir() if p.is_dir()] == []


def test_strategy_e_is_rejected_with_its_reason(inventory, tmp_path):
    with pytest.raises(InputError, match="torchrun starts each rank as a new interpreter"):
        open_source("E", inventory.head(1), caching(tmp_path))
