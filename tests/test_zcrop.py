"""The Zarr route without a converted copy: `.zcrop` references read the challenge's crops in
place, and every reader of the datalist's files (headers, streams, the probe's corner, the
report's slices, prediction's scratch copy, the inventory and the training store) sees exactly
what it sees in the NIfTI conversion of the same crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ONTOLOGY
from test_convert import crop_dir, manifest
from test_zarr_crops import EM_VS, make

from cellmapseg.config import from_dict
from cellmapseg.data import store, volume_io, zcrop
from cellmapseg.data.convert import convert
from cellmapseg.data.inventory import write_inventory
from cellmapseg.errors import InputError


@pytest.fixture
def em() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (12, 14, 16), dtype=np.uint8)


@pytest.fixture
def both(tmp_path, em, monkeypatch) -> tuple[dict, dict]:
    """(NIfTI datalist, reference datalist) of the same two crops; references in slabs of 3
    planes so that every crop spans several."""
    monkeypatch.setattr(zcrop, "SLAB_PLANES", 3)
    make(tmp_path, em)
    rows = manifest(tmp_path, em)
    out = [json.loads(convert(tmp_path, rows, ONTOLOGY, EM_VS, tmp_path / name / "datalist.json",
                              nifti=nifti).read_text())
           for name, nifti in (("nifti", True), ("refs", False))]
    return out[0], out[1]


def _pairs(both) -> list[tuple[str, str]]:
    nifti, refs = both
    return [(a[key], b[key]) for split in ("training", "validation")
            for a, b in zip(nifti[split], refs[split], strict=True) for key in ("image", "label")]


def test_references_name_no_voxels_and_read_as_their_nifti_conversion(both, tmp_path):
    refs = both[1]
    assert not list((tmp_path / "refs").rglob("*.nii.gz"))
    assert all(Path(e["image"]).name.endswith("_0000.zcrop")
               for split in ("training", "validation") for e in refs[split])
    assert [e["annotated_classes"] for e in refs["training"]] == \
        [e["annotated_classes"] for e in both[0]["training"]]
    for nii, ref in _pairs(both):
        a, b = volume_io.read_header(nii), volume_io.read_header(ref)
        assert (a.shape, a.dtype, a.spacing, a.ndim) == (b.shape, b.dtype, b.spacing, b.ndim)
        assert np.allclose(a.affine, b.affine)
        want = volume_io.load_array(nii)
        assert np.array_equal(volume_io.load_array(ref), want)
        streamed = np.concatenate(list(volume_io.stream_voxels(ref, chunk_bytes=100)))
        assert np.array_equal(streamed, want.ravel(order="F"))
        assert np.array_equal(volume_io.read_corner(ref, 5), volume_io.read_corner(nii, 5))
        z = a.shape[0] // 2
        assert np.array_equal(volume_io.axis0_slice(ref, z), volume_io.axis0_slice(nii, z))
        assert np.array_equal(volume_io.axis0_counts(ref, 256), volume_io.axis0_counts(nii, 256))
        copy = volume_io.stream_to_npy(ref, np.dtype(np.float32), tmp_path / "copy.npy")
        assert np.array_equal(copy[...], want.astype(np.float32))


def test_inventory_and_training_store_from_references_equal_the_converted_ones(both, tmp_path):
    frames, stores = [], []
    for name in ("nifti", "refs"):
        cfg = from_dict({"data": {"datalist": str(tmp_path / name / "datalist.json")}})
        frame = write_inventory(cfg, tmp_path / f"{name}.csv")
        frames.append(frame.drop(columns=["image", "label"]))
        info = store.ensure_store(tmp_path / f"shm-{name}", pd.read_csv(
            tmp_path / f"{name}.csv", keep_default_na=False).to_dict("records"))
        source = store.StoreSource(info.path)
        stores.append([(v.name, v.image.copy(), v.label.copy(), v.mean, v.std)
                       for v in (source.get(i) for i in range(len(source)))])
    pd.testing.assert_frame_equal(frames[0], frames[1])
    for a, b in zip(*stores, strict=True):
        assert a[0] == b[0] and a[3:] == b[3:]
        assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])


def test_a_truncated_crop_fails_the_inventory_with_one_line_naming_its_array(tmp_path, em):
    make(tmp_path, em)
    datalist = convert(tmp_path, manifest(tmp_path, em), ONTOLOGY, EM_VS,
                       tmp_path / "refs" / "datalist.json", nifti=False)
    (crop_dir(tmp_path) / "mito_lum" / "s0" / "1" / "1" / "1").unlink()  # crop 1's chunk
    cfg = from_dict({"data": {"datalist": str(datalist)}})
    with pytest.raises(InputError) as exc:
        write_inventory(cfg, tmp_path / "inventory.csv")
    text = str(exc.value)
    assert "crop1/mito_lum/s0" in text and len(text.splitlines()) == 1, text
    assert not (tmp_path / "inventory.csv").exists()


def test_a_reference_that_is_not_one_is_one_line(tmp_path):
    bad = tmp_path / "x_crop1_0000.zcrop"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(InputError, match=r"x_crop1_0000.zcrop: not a cellmapseg-zarr-crop"):
        volume_io.read_header(bad)
    with pytest.raises(InputError, match=r"missing_crop1.zcrop: file not found"):
        volume_io.read_header(tmp_path / "missing_crop1.zcrop")
