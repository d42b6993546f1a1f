"""Test crops are located in their datasets' EM before any is predicted: the read box holds
the manifest region plus half a window of context where the EM has it, and each bad crop (a
missing dataset, a region outside the EM) is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ONTOLOGY  # noqa: F401  (the fixtures' ontology)
from test_zarr_crops import DATASET, make

from cellmapseg.data.manifest import read_manifest
from cellmapseg.errors import InputError
from cellmapseg.predict.test_crops import locate, read_image

HEADER = "crop_name,dataset,class_label,voxel_size,translation,shape\n"


@pytest.fixture
def root(tmp_path) -> Path:
    make(tmp_path, np.random.default_rng(7).integers(0, 256, (12, 14, 16), dtype=np.uint8))
    return tmp_path


def rows(tmp_path: Path, *lines: str):
    path = tmp_path / "test.csv"
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return read_manifest(path)


def test_the_read_box_covers_every_class_grid_plus_context_within_the_em(root):
    # EM: 8 nm, voxel 0 centred at 0 nm, 12 x 14 x 16 voxels. Two class grids of crop 9: one at
    # 4 nm over EM voxels z 1-2, y 1-2, x 1-2; one at 2 nm reaching into EM voxel x = 4.
    crops = locate(root, rows(root, f"9,{DATASET},ecs,[4;4;4],[6;6;6],[4;4;4]",
                              f"9,{DATASET},mito,[2;2;2],[5;5;29],[2;2;2]"),
                   (8.0, 8.0, 8.0), (2, 2, 2))
    (crop,) = crops
    assert crop.classes == ("ecs", "mito")
    assert crop.box == (slice(0, 5), slice(0, 5), slice(0, 7))  # [1, 3)/[1, 5) +- 2, clipped
    assert crop.translation == (0.0, 0.0, 0.0)


def test_the_image_read_is_the_em_box_with_its_statistics(root):
    (crop,) = locate(root, rows(root, f"9,{DATASET},ecs,[4;4;4],[6;6;6],[4;4;4]"),
                     (8.0, 8.0, 8.0), (1, 1, 1))
    image, scan = read_image(crop, root / "image.npy")
    want = np.asarray(crop.em.array[crop.box])
    assert np.array_equal(image[...], want)
    assert scan.mean == pytest.approx(float(want.mean()))


def test_each_bad_test_crop_is_one_line_before_any_is_predicted(root):
    with pytest.raises(InputError) as exc:
        locate(root, rows(root, "9,jrc_gone,ecs,[4;4;4],[6;6;6],[4;4;4]",
                          f"10,{DATASET},ecs,[4;4;4],[6;6;600],[4;4;4]",
                          f"11,{DATASET},ecs,[4;4;4],[6;6;6],[4;4;4]"),
               (8.0, 8.0, 8.0), (2, 2, 2))
    lines = str(exc.value).splitlines()
    assert len(lines) == 2, lines
    assert "dataset jrc_gone not found" in lines[0]
    assert f"dataset {DATASET} crop10: the region" in lines[1]
    assert "reaches outside the EM s0" in lines[1]


def test_a_dataset_without_the_models_voxel_size_is_one_line_listing_its_levels(root):
    with pytest.raises(InputError, match=r"no level at voxel size \[6, 6, 6\] nm"):
        locate(root, rows(root, f"9,{DATASET},ecs,[4;4;4],[6;6;6],[4;4;4]"),
               (6.0, 6.0, 6.0), (2, 2, 2))
