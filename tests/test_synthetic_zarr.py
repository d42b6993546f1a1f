"""The embedded synthetic dataset in the challenge's Zarr layout (synthetic.challenge_data):
what the data layer reads back from it, where its crops lie, its manifests, determinism, the
atomic swap, and its wall time on the default config."""

from __future__ import annotations

import itertools
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import ATOMIC, ONTOLOGY
from scipy import ndimage as ndi

import cellmapseg.synthetic.challenge_data as cd
from cellmapseg.config import SyntheticConfig, from_dict
from cellmapseg.data import zarr_crops as zc
from cellmapseg.data.manifest import Grid, by_crop, read_manifest
from cellmapseg.data.ngff import level_at
from cellmapseg.synthetic.plan import plan_crops

SPACING = (8.0, 8.0, 8.0)
MEMBRANES = [v for n, v in zip(ATOMIC, ONTOLOGY.labels, strict=True)
             if n == "pm" or n.endswith("_mem")]
SMALL_SLABS = 200_000  # several slabs per volume even in the small config
CONTEXT = 16  # training voxels of EM wanted around every crop


def small_config(**overrides: Any) -> SyntheticConfig:
    synthetic = {"seed": 3, "n_datasets": 2, "n_train": 5, "n_val": 2, "shape": [24, 24, 24],
                 "shape_jitter": 0.2, "large_shape": [32, 36, 40], "small_shape": [10, 16, 20],
                 **overrides}
    return from_dict({"data": {"synthetic": synthetic}}).data.synthetic


def tiny_config(**overrides: Any) -> SyntheticConfig:
    return small_config(n_train=3, n_val=1, shape=[12, 12, 12], large_shape=[16, 16, 16],
                        small_shape=[8, 8, 10], **overrides)


def run(cfg: SyntheticConfig, out: Path, **kw: Any) -> dict[str, Any]:
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = cd.generate_zarr(cfg, SPACING, out / "data", out / "train.csv", out / "test.csv",
                               ONTOLOGY, **kw)
    return {"summary": summary, "root": out / "data", "train": out / "train.csv",
            "test": out / "test.csv", "plans": {p.index + 1: p for p in plan_crops(cfg, ONTOLOGY)},
            "wall": time.perf_counter() - t0, "cpu": time.process_time() - cpu0, "cfg": cfg}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cd, "SLAB_VOXELS", SMALL_SLABS)
        return run(small_config(), tmp_path_factory.mktemp("zarr"), workers=2)


def em_level(root: Path, dataset: str, voxel_size=SPACING):
    group = zarr.open_group(zc.dataset_path(root, dataset) / zc.EM_PATH, mode="r")
    return level_at(group, voxel_size)


def training_box(root: Path, dataset: str, grid: Grid) -> tuple[slice, ...]:
    """The EM voxels at the training level that a crop grid overlaps."""
    geometry = zc.CropGeometry(grid.voxel_size, grid.translation, grid.shape)
    return zc.em_box(geometry, em_level(root, dataset), dataset, "crop")


def off_grid(value: np.ndarray, step: float) -> np.ndarray:
    return np.abs(value / step - np.round(value / step)) > 1e-6


def check_read_back(w: dict[str, Any]) -> int:
    """Every train-manifest crop reads back at the training level with the plan's classes and
    the shape of the EM voxels it overlaps; returns the number of crops read."""
    rows = by_crop(read_manifest(w["train"]))
    assert {int(k.removeprefix("crop")) for k in rows} == \
        {n for n, p in w["plans"].items() if p.annotated}
    for crop_id, crop_rows in rows.items():
        plan = w["plans"][int(crop_id.removeprefix("crop"))]
        grid = crop_rows[0].grid
        assert {r.class_label for r in crop_rows} == {ATOMIC[c] for c in plan.annotated}
        assert grid.voxel_size == tuple(s / 2 for s in SPACING)
        assert grid.shape == tuple(2 * n for n in plan.shape)
        got = zc.read_training_crop(w["root"], plan.dataset_name, crop_id, ONTOLOGY, SPACING)
        box = training_box(w["root"], plan.dataset_name, grid)
        half = off_grid(grid.start - em_level(w["root"], plan.dataset_name).start, SPACING[0])
        assert got.image.shape == tuple(s.stop - s.start for s in box) == got.label.shape
        assert got.image.shape == tuple(int(n) for n in np.asarray(plan.shape) + half)
        assert got.annotated == tuple(sorted(plan.annotated))
        assert got.image.dtype == np.uint8
    return len(rows)


# ------------------------------------------------------------------------------- read back
def test_every_train_manifest_crop_reads_back_with_the_plans_shape_and_classes(written):
    assert check_read_back(written) == sum(1 for p in written["plans"].values() if p.annotated)


def test_crops_hold_a_few_unannotated_classes_as_unknown_everywhere(written):
    for n, plan in written["plans"].items():
        got = zc.plan_crop(written["root"], plan.dataset_name, n, ONTOLOGY, SPACING)
        assert 1 <= len(got.skipped) <= 3
        assert all(why == "unknown everywhere" for _, why in got.skipped)
        assert not {ONTOLOGY.channel(name) for name, _ in got.skipped} & plan.annotated


def test_the_crop_annotating_nothing_is_in_the_store_but_not_in_the_train_manifest(written):
    (empty,) = [n for n, p in written["plans"].items() if not p.annotated]
    plan = written["plans"][empty]
    assert f"crop{empty}" in zc.list_crops(written["root"], plan.dataset_name)
    got = zc.read_training_crop(written["root"], plan.dataset_name, empty, ONTOLOGY, SPACING)
    assert got.annotated == () and got.skipped and not got.label.any()
    assert f"crop{empty}" not in by_crop(read_manifest(written["train"]))


def test_instance_classes_hold_one_id_per_connected_component(written):
    seen = 0
    for n, plan in written["plans"].items():
        crop = zarr.open_group(zc.dataset_path(written["root"], plan.dataset_name)
                               / zc.GROUNDTRUTH_PATH / f"crop{n}", mode="r")
        for c in plan.annotated:
            name = ATOMIC[c]
            data = crop[f"{name}/s0"][...]
            kind = crop[name].attrs["cellmap"]["annotation"]["annotation_type"]["type"]
            if not ONTOLOGY.is_instance(name):
                assert kind == zc.SEMANTIC and set(np.unique(data)) <= {0, 1}
                continue
            assert kind == zc.INSTANCE
            components, count = ndi.label(data > 0)
            pairs = set(zip(components[data > 0].tolist(), data[data > 0].tolist(),
                            strict=True))
            assert len(pairs) == count == len({i for _, i in pairs})  # a bijection
            seen += count
    assert seen > 0  # the config annotates nuc somewhere


def test_membranes_are_darker_than_cytoplasm_at_the_training_level(written):
    membrane, rest = [], []
    for n, plan in written["plans"].items():
        got = zc.read_training_crop(written["root"], plan.dataset_name, n, ONTOLOGY, SPACING)
        membrane.append(got.image[np.isin(got.label, MEMBRANES)])
        rest.append(got.image[got.label == 0])
    assert np.concatenate(membrane).mean() < np.concatenate(rest).mean() - 30


# ------------------------------------------------------------------------------- placement
def store_boxes(w: dict[str, Any]) -> dict[str, list[tuple[str, tuple[slice, ...]]]]:
    """Per dataset: (crop, training-level EM box) of every label crop and test crop."""
    out: dict[str, list[tuple[str, tuple[slice, ...]]]] = {}
    for n, plan in w["plans"].items():
        box = zc.plan_crop(w["root"], plan.dataset_name, n, ONTOLOGY, SPACING).box
        out.setdefault(plan.dataset_name, []).append((f"crop{n}", box))
    for crop_id, rows in by_crop(read_manifest(w["test"])).items():
        out[rows[0].dataset].append((crop_id, training_box(w["root"], rows[0].dataset,
                                                           rows[0].grid)))
    return out


def test_crops_do_not_overlap_and_have_em_context_on_every_side(written):
    for dataset, boxes in store_boxes(written).items():
        shape = em_level(written["root"], dataset).shape
        for _, box in boxes:
            assert all(s.start >= CONTEXT and n - s.stop >= CONTEXT
                       for s, n in zip(box, shape, strict=True)), (dataset, box, shape)
        for (a, one), (b, two) in itertools.combinations(boxes, 2):
            assert any(x.stop <= y.start or y.stop <= x.start
                       for x, y in zip(one, two, strict=True)), (dataset, a, b)


def test_crops_sit_on_the_4nm_grid_and_one_is_off_the_8nm_grid(written):
    rows = [r for r in read_manifest(written["train"]) if r.grid.voxel_size[0] == 4.0]
    off = []
    for r in rows:
        s0, s1 = em_level(written["root"], r.dataset, (4.0,) * 3), em_level(written["root"],
                                                                             r.dataset)
        assert not off_grid(r.grid.start - s0.start, 4.0).any()
        off.append(off_grid(r.grid.start - s1.start, 8.0).any())
        assert any(t != 0 for t in s0.translation)  # code may not assume an EM at 0
    assert any(off)


def test_test_crops_have_em_but_no_labels_one_at_2nm_off_the_4nm_grid(written):
    rows = by_crop(read_manifest(written["test"]))
    assert [int(k.removeprefix("crop")) for k in rows] == written["summary"]["test_crops"]
    assert sorted(r[0].dataset for r in rows.values()) == written["summary"]["datasets"]
    sizes = []
    for crop_id, crop_rows in rows.items():
        grid, dataset = crop_rows[0].grid, crop_rows[0].dataset
        assert [r.class_label for r in crop_rows] == list(ONTOLOGY.names)
        assert not (zc.dataset_path(written["root"], dataset) / zc.GROUNDTRUTH_PATH
                    / crop_id).exists()
        sizes.append(grid.voxel_size[0])
        scale = 8.0 / grid.voxel_size[0]
        assert np.allclose(np.asarray(grid.shape) / scale, written["cfg"].shape, rtol=0.25)
        if grid.voxel_size == (2.0, 2.0, 2.0):
            s0 = em_level(written["root"], dataset, (4.0,) * 3)
            assert off_grid(np.asarray(grid.translation), 8.0).all()
            assert off_grid(grid.start - s0.start, 4.0).any()
    assert sorted(sizes) == [2.0] + [4.0] * (len(rows) - 1)


def test_the_summary_lists_datasets_and_the_plans_splits(written):
    plans = written["plans"].values()
    assert written["summary"] == {
        "datasets": [f"jrc_synth-{d + 1}" for d in range(written["cfg"].n_datasets)],
        "train_crops": [p.index + 1 for p in plans if p.split == "training"],
        "validation_crops": [p.index + 1 for p in plans if p.split == "validation"],
        "test_crops": [len(plans) + 1 + d for d in range(written["cfg"].n_datasets)],
    }


def test_the_slabs_tile_the_longest_axis():
    for shape in [(10, 12, 14), (104, 171, 244), (208, 179, 162)]:
        spans = cd._slab_spans(shape)
        assert spans[0][0] == 0 and spans[-1][1] == 2 * max(shape)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert all(b - a >= 2 * cd.HALO for a, b in spans)


# ---------------------------------------------------------------- determinism and atomicity
def em_chunk(root: Path, dataset: str = "jrc_synth-2") -> bytes:
    return (zc.dataset_path(root, dataset) / zc.EM_PATH / "s0" / "0" / "1" / "0").read_bytes()


def test_same_seed_gives_identical_bytes_whatever_the_thread_count(written, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(cd, "SLAB_VOXELS", SMALL_SLABS)
    again = run(small_config(), tmp_path / "again", workers=1)
    for key in ("train", "test"):
        assert again[key].read_bytes() == written[key].read_bytes()
    assert em_chunk(again["root"]) == em_chunk(written["root"])
    other = run(tiny_config(seed=4), tmp_path / "other")
    assert em_chunk(other["root"], "jrc_synth-1") != em_chunk(
        run(tiny_config(), tmp_path / "tiny")["root"], "jrc_synth-1")


def test_a_rerun_replaces_the_root_and_leaves_no_temporary_folder(tmp_path):
    first = run(tiny_config(), tmp_path)
    stale = first["root"] / "stale.txt"
    stale.write_text("from an older run")
    run(tiny_config(), tmp_path)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "test.csv", "train.csv"]


def test_a_failed_run_leaves_the_previous_dataset_and_its_manifests(tmp_path, monkeypatch):
    first = run(tiny_config(), tmp_path)
    before = {p: p.read_bytes() for p in (first["train"], first["test"])}
    chunk = em_chunk(first["root"])
    calls, write_dataset = [], cd.write_dataset

    def failing(root, ds, chunks):  # the second dataset cannot be written
        calls.append(ds.name)
        if len(calls) == 2:
            raise OSError("disk full")
        return write_dataset(root, ds, chunks)

    monkeypatch.setattr(cd, "write_dataset", failing)
    with pytest.raises(OSError, match="disk full"):
        run(tiny_config(seed=9), tmp_path)
    assert {p: p.read_bytes() for p in before} == before
    assert em_chunk(first["root"]) == chunk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "test.csv", "train.csv"]


# ------------------------------------------------------------------------- default config
@pytest.mark.slow
def test_the_default_config_is_written_fast_and_reads_back(tmp_path):
    cfg = from_dict({}).data.synthetic
    w = run(cfg, tmp_path)
    voxels = sum(math.prod(em_level(w["root"], d).shape) for d in w["summary"]["datasets"])
    print(f"\ngenerate_zarr on the default config: {w['wall']:.1f} s wall, {w['cpu']:.1f} s "
          f"CPU on {len(os.sched_getaffinity(0))} usable core(s), {voxels} EM voxels at 8 nm")
    assert w["cpu"] < 2 * 30.0  # fits 30 s on 2 cores (CPU time: others may share the host)
    assert w["summary"]["validation_crops"] == [11, 12, 13, 14]
    assert check_read_back(w) == 13


def test_the_defaults_first_dataset_has_black_borders_in_training_and_validation_crops():
    """data.padding_mask has something to do in the embedded default: the first dataset's EM
    is black a few planes into the crops nearest its x = 0 face, validation crop 13 among
    them, and the other datasets are not."""
    from cellmapseg.config import load
    from cellmapseg.synthetic.challenge_data import PADDED_PLANES, _black_border, _layout
    from cellmapseg.synthetic.plan import plan_crops

    cfg = load(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    sites = _layout(cfg.data.synthetic, plan_crops(cfg.data.synthetic, cfg.classes))
    low = min(s.corner[2] for s in sites[0][1] if s.plan is not None)
    padded = {s.plan.split for s in sites[0][1] if s.plan is not None and s.corner[2] == low}
    assert padded == {"training", "validation"}
    assert cfg.data.padding_mask == "border"
    em = np.full((40, 40, 2 * low + 20), 7, np.uint8)
    black = _black_border(em, sites[0][1])
    assert not black[:, :, : 2 * (low + PADDED_PLANES)].any()
    assert (black[:, :, 2 * (low + PADDED_PLANES):] == 7).all()
