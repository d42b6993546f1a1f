"""The Zarr route's first stage: a train manifest's challenge crops as NIfTI crops and a
datalist. Voxels equal the reader's, the affine carries the crop's world grid, the held-out
crops form the validation split, and each bad crop is one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import ONTOLOGY
from test_zarr_crops import DATASET, EM_VS, crop1, crop2, crop_dir, make

from cellmapseg.data import zarr_crops as zc
from cellmapseg.data.convert import convert
from cellmapseg.data.datalist import read_datalist
from cellmapseg.errors import InputError
from cellmapseg.synthetic.zarr_layout import ZarrDataset, manifest_rows, manifest_text


@pytest.fixture
def em() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (12, 14, 16), dtype=np.uint8)


@pytest.fixture
def root(tmp_path, em) -> Path:
    make(tmp_path, em)
    return tmp_path


def manifest(root: Path, em: np.ndarray, extra: tuple[str, ...] = ()) -> Path:
    ds = ZarrDataset(DATASET, em, EM_VS, crops=(crop1(), crop2()))
    path = root / "train.csv"
    path.write_text(manifest_text([*manifest_rows([ds], "train"), *extra]))
    return path


def run(root: Path, em: np.ndarray, extra: tuple[str, ...] = (), **kw) -> Path:
    return convert(root, manifest(root, em, extra), ONTOLOGY, EM_VS,
                   root / "out" / "datalist.json", **kw)


def nothing_written(root: Path) -> bool:
    out = root / "out"
    return not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_converted_crops_hold_the_readers_voxels_and_world_grid(root, em):
    datalist = json.loads(run(root, em, validation=[2]).read_text())
    assert [Path(e["image"]).name for e in datalist["training"]] == \
        [f"{DATASET}_crop1_0000.nii.gz"]
    assert [Path(e["label"]).name for e in datalist["validation"]] == [f"{DATASET}_crop2.nii.gz"]
    for entry, crop in ((datalist["training"][0], "1"), (datalist["validation"][0], "2")):
        want = zc.read_training_crop(root, DATASET, crop, ONTOLOGY, EM_VS)
        image, label = nib.load(entry["image"]), nib.load(entry["label"])
        assert np.array_equal(np.asarray(image.dataobj), want.image)
        assert np.array_equal(np.asarray(label.dataobj), want.label)
        assert np.allclose(image.affine[:3, 3], want.geometry.translation)
        assert np.allclose(image.header.get_zooms(), EM_VS)
        assert np.array_equal(image.affine, label.affine)
        assert entry["annotated_classes"] == ",".join(map(str, sorted(want.annotated)))


def test_the_converted_datalist_reads_as_the_nifti_route_reads_it(root, em):
    entries = read_datalist(run(root, em), "", ONTOLOGY.num_channels)
    assert [(e.dataset, e.crop_id) for e in entries] == [(DATASET, "crop1"), (DATASET, "crop2")]
    # two crops: every fifth would hold none out, so the last one is validation
    assert [e.split for e in entries] == ["training", "validation"]


def test_a_validation_crop_the_manifest_lacks_is_one_line(root, em):
    with pytest.raises(InputError, match=r"validation_crops' names crop7, not in the train"):
        run(root, em, validation=[7])
    assert nothing_written(root)


def test_each_bad_crop_is_one_line_and_nothing_is_written(root, em):
    rows = ("3,jrc_missing,ecs,[4.0;4.0;4.0],[14.0;22.0;30.0],[8;10;12]",
            "4,jrc_synth-1,ecs,[4.0;4.0;4.0],[14.0;22.0;30.0],[8;10;12]")
    with pytest.raises(InputError) as exc:
        run(root, em, rows)
    lines = str(exc.value).splitlines()
    assert len(lines) == 2, lines
    assert "dataset jrc_missing not found" in lines[0]
    assert "crop4 of dataset jrc_synth-1 not found" in lines[1]
    assert nothing_written(root)


def test_a_crop_outside_its_em_is_one_line_and_nothing_is_written(tmp_path, em):
    far = crop1()
    far = type(far)(far.crop, far.voxel_size, (1006.0, 22.0, 30.0), far.labels)
    make(tmp_path, em, crops=(far,))
    path = tmp_path / "train.csv"
    ds = ZarrDataset(DATASET, em, EM_VS, crops=(far,))
    path.write_text(manifest_text(manifest_rows([ds], "train")))
    with pytest.raises(InputError) as exc:
        convert(tmp_path, path, ONTOLOGY, EM_VS, tmp_path / "out" / "datalist.json")
    text = str(exc.value)
    assert len(text.splitlines()) == 1 and "reaches outside the EM s0" in text, text
    assert nothing_written(tmp_path)


def test_a_truncated_crop_is_one_line_naming_its_array_and_leaves_nothing(root, em):
    (crop_dir(root) / "mito_lum" / "s0" / "1" / "1" / "1").unlink()  # crop 1's chunk
    with pytest.raises(InputError) as exc:
        run(root, em)
    text = str(exc.value)
    assert len(text.splitlines()) == 1 and "crop1/mito_lum/s0" in text, text
    assert nothing_written(root)


def test_a_mislaid_crop_is_one_line_naming_dataset_and_crop(root, em):
    attrs_path = crop_dir(root) / "ecs" / ".zattrs"
    attrs = json.loads(attrs_path.read_text())
    for ms in attrs["multiscales"]:
        for ds in ms["datasets"]:
            for t in ds["coordinateTransformations"]:
                if t["type"] == "translation":
                    t["translation"] = [v + 1.0 for v in t["translation"]]
    attrs_path.write_text(json.dumps(attrs))
    with pytest.raises(InputError) as exc:
        run(root, em)
    text = str(exc.value)
    assert len(text.splitlines()) == 1 and "crop1" in text, text
    assert nothing_written(root)
