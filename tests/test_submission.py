"""The submission: the test manifest read, predictions packed at each row's ground-truth grid
into one zipped Zarr-2 store, and the check that compares the zip with the manifest."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import ZipStore

from cellmapseg.config import from_dict
from cellmapseg.data.manifest import Grid, ManifestRow, read_manifest, region, write_manifest
from cellmapseg.errors import InputError
from cellmapseg.submit.check import check
from cellmapseg.submit.pack import pack

ONTOLOGY = from_dict({"classes": {
    "atomic": [{"name": "ecs", "label": 1}, {"name": "mito_mem", "label": 3},
               {"name": "mito_lum", "label": 4}],
    "groups": [{"name": "mito", "members": ["mito_mem", "mito_lum"]}],
    "instance": ["mito"], "tested": ["ecs", "mito_mem", "mito"]}}).classes

# Two test crops: 557 at an anisotropic 1.74 x 2 x 2 nm with a translation that is not a
# multiple of its voxel size, 12 at 16 nm (coarser than the 8 nm predictions).
ROWS = [
    ManifestRow("557", "jrc_a", "ecs", Grid((1.74, 2.0, 2.0), (101.13, 97.0, 99.0), (37, 30, 26))),
    ManifestRow("557", "jrc_a", "mito", Grid((1.74, 2.0, 2.0), (101.13, 97.0, 99.0), (37, 30, 26))),
    ManifestRow("557", "jrc_a", "lyso", Grid((1.74, 2.0, 2.0), (101.13, 97.0, 99.0), (37, 30, 26))),
    ManifestRow("12", "jrc_b", "mito_mem", Grid((16.0, 16.0, 16.0), (8.0, 8.0, 8.0), (5, 3, 4))),
]


def _predictions(tmp_path: Path, rows=ROWS) -> Path:
    """8 nm predictions covering each crop's region (+ a margin), as the predict rule writes."""
    store = tmp_path / "predictions.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    rng = np.random.default_rng(0)
    by = {}
    for r in rows:
        by.setdefault(r.crop_id, []).append(r)
    for crop_id, crop_rows in by.items():
        start, stop = region(crop_rows)
        origin = np.floor(start / 8) * 8 - 8
        shape = tuple(int(n) for n in np.ceil((stop - origin) / 8) + 1)
        group = root.create_group(crop_id)
        for name in ONTOLOGY.names:
            instance = ONTOLOGY.is_instance(name)
            data = (rng.integers(0, 4, shape) if instance else rng.random(shape) > 0.6)
            arr = group.create_array(name, shape=shape, dtype=np.uint32 if instance else np.uint8,
                                     chunks=(8, 8, 8))
            arr[:] = data
            arr.attrs.update({"voxel_size": [8.0] * 3,
                              "translation": [float(v) for v in origin + 4]})
    return store


def test_manifest_round_trips_in_the_challenge_format(tmp_path: Path) -> None:
    path = tmp_path / "test_crop_manifest.csv"
    write_manifest(path, ROWS)
    assert path.read_text().splitlines()[1] == \
        "557,jrc_a,ecs,[1.74;2.0;2.0],[101.13;97.0;99.0],[37;30;26]"
    assert read_manifest(path) == ROWS


def test_each_malformed_manifest_row_is_one_line_naming_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("crop_name,dataset,class_label,voxel_size,translation,shape\n"
                    "557,jrc_a,ecs,[1.74;2.0],[0;0;0],[4;4;4]\n"
                    "x9,jrc_a,ecs,[2;2;2],[0;0;0],[4;4;4]\n"
                    "558,jrc_a,ecs,[2;2;2],[0;0;0],[4;four;4]\n")
    with pytest.raises(InputError) as err:
        read_manifest(path)
    lines = str(err.value).splitlines()
    assert lines == [f"{path}:2: voxel_size '[1.74;2.0]' has 2 values, expected 3 (z;y;x)",
                     f"{path}:3: crop_name 'x9' is not a crop number",
                     f"{path}:4: shape '[4;four;4]' holds a value that is not int"]


def test_every_submitted_array_has_its_manifest_rows_geometry(tmp_path: Path) -> None:
    out = tmp_path / "submission" / "submission.zip"
    summary = pack(_predictions(tmp_path), ROWS, ONTOLOGY, out)
    assert summary["arrays"] == 3 and summary["left_out"] == ["crop557/lyso"]
    problems, missing = check(out, ROWS)
    assert problems == [] and missing == ["crop557/lyso"]
    store = ZipStore(out, mode="r")
    root = zarr.open_group(store, mode="r", zarr_format=2)
    for r in ROWS[:2] + ROWS[3:]:
        arr = root[f"{r.crop_id}/{r.class_label}"]
        assert tuple(arr.shape) == r.grid.shape
        assert tuple(arr.attrs["voxel_size"]) == r.grid.voxel_size
        assert tuple(arr.attrs["translation"]) == r.grid.translation
        assert arr.dtype == (np.uint32 if r.class_label == "mito" else np.uint8)
    assert root["crop557/mito"][:].max() > 0 and root["crop557/ecs"][:].any()
    store.close()
    with zipfile.ZipFile(out) as zf:  # the store's own files at the zip's root, no links
        names = zf.namelist()
        assert ".zgroup" in names and "crop557/ecs/.zattrs" in names
        assert all((i.external_attr >> 16) & 0o170000 != 0o120000 for i in zf.infolist())
    assert sorted(os.listdir(out.parent)) == ["submission.zip"]  # nothing else left behind


def test_the_check_names_every_mismatch(tmp_path: Path) -> None:
    out = tmp_path / "submission.zip"
    pack(_predictions(tmp_path), ROWS, ONTOLOGY, out)
    moved = [ManifestRow("557", "jrc_a", "ecs", Grid((1.74, 2.0, 2.0), (103.0, 97.0, 99.0),
                                                      (37, 30, 25)))]
    problems, _ = check(out, moved)
    assert problems == [f"{out}: crop557/ecs: shape [37, 30, 26] != manifest [37, 30, 25]; "
                        f"translation [101.13, 97.0, 99.0] != manifest [103.0, 97.0, 99.0]"]
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip")
    assert check(bad, ROWS) == ([f"{bad}: not a zip file"], [])


def test_a_test_crop_without_predictions_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    preds = _predictions(tmp_path, ROWS[:3])
    out = tmp_path / "submission" / "submission.zip"
    with pytest.raises(InputError, match=r"predictions.zarr: test crop\(s\) crop12 not predicted"):
        pack(preds, ROWS, ONTOLOGY, out)
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_a_prediction_without_its_grid_is_refused_naming_the_array(tmp_path: Path) -> None:
    preds = _predictions(tmp_path)
    arr = zarr.open_group(str(preds), mode="a")["crop12/mito_mem"]
    arr.attrs.put({"voxel_size": [8.0] * 3})
    out = tmp_path / "submission" / "submission.zip"
    with pytest.raises(InputError, match=r"crop12/mito_mem: attribute translation missing"):
        pack(preds, ROWS, ONTOLOGY, out)
    assert os.listdir(out.parent) == []


def test_the_submit_command_packs_checks_and_reports_bad_input_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from cellmapseg.cli import main

    classes = tmp_path / "classes.yaml"
    classes.write_text(yaml.safe_dump({"classes": {
        "atomic": [{"name": "ecs", "label": 1}, {"name": "mito_mem", "label": 3},
                   {"name": "mito_lum", "label": 4}],
        "groups": [{"name": "mito", "members": ["mito_mem", "mito_lum"]}],
        "instance": ["mito"], "tested": ["ecs", "mito_mem", "mito"]}}))
    manifest = tmp_path / "test_crop_manifest.csv"
    write_manifest(manifest, ROWS)
    out = tmp_path / "sub" / "submission.zip"
    args = ["-c", str(classes), "submit", "--model", "m", "--manifest",
            str(manifest), "--predictions", str(_predictions(tmp_path)), "--out", str(out)]
    main(args)
    assert out.is_file() and (out.parent / "submission.json").is_file()
    main(["-c", str(classes), "check-submission", str(out), "--manifest", str(manifest)])
    manifest.write_text(manifest.read_text().replace("[37;30;26]", "[37;30;27]", 1))
    capsys.readouterr()
    with pytest.raises(SystemExit) as end:
        main(["-c", str(classes), "check-submission", str(out), "--manifest", str(manifest)])
    assert end.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("crop557/ecs: shape [37, 30, 26] != manifest [37, 30, 27]")
