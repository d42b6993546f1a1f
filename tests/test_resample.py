"""Predictions brought to a ground-truth grid by the challenge's rules, on hand-made cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellmapseg.data import resample
from cellmapseg.data.manifest import Grid
from cellmapseg.data.resample import match_crop_space, offset, placement
from cellmapseg.errors import InputError


def _line(values, axis: int = 2) -> np.ndarray:
    """A 3-D array holding `values` along one axis (the other axes have length 1)."""
    shape = [1, 1, 1]
    shape[axis] = len(values)
    return np.asarray(values).reshape(shape)


def test_nearest_neighbour_upsampling_repeats_instance_ids(tmp_path: Path) -> None:
    ids = _line([1, 2, 300], axis=2).astype(np.uint32)
    out = match_crop_space(ids, (8, 8, 8), (0, 0, 0), True, Grid((8, 8, 4), (0, 0, 0), (1, 1, 6)),
                           tmp_path)
    assert out.dtype == np.uint32
    assert out.ravel().tolist() == [1, 1, 2, 2, 300, 300]


def test_linear_upsampling_thresholds_at_one_half(tmp_path: Path) -> None:
    # grid-mode coordinates (o + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, ...; outside is 0:
    # values 0, 0.25, 0.75, 0.75, 0.25, 0 -> only the middle two pass > 0.5
    mask = _line([0, 1, 0]).astype(np.uint8)
    out = match_crop_space(mask, (4, 4, 4), (0, 0, 0), False, Grid((4, 4, 2), (0, 0, 0), (1, 1, 6)),
                           tmp_path)
    assert out.dtype == bool and out.ravel().tolist() == [0, 0, 1, 1, 0, 0]


def test_a_lone_voxel_vanishes_when_downsampled_by_two(tmp_path: Path) -> None:
    # anti-aliasing (skimage's default when shrinking) spreads one voxel below 0.5
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[1, 1, 1] = 1
    out = match_crop_space(mask, (2, 2, 2), (0, 0, 0), False, Grid((4, 4, 4), (0, 0, 0), (2, 2, 2)),
                           tmp_path)
    assert not out.any()
    mask[:] = 1
    out = match_crop_space(mask, (2, 2, 2), (0, 0, 0), False, Grid((4, 4, 4), (0, 0, 0), (2, 2, 2)),
                           tmp_path)
    assert out.all()


def test_anisotropic_upsampling_matches_grid_mode_zoom(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mask = (ndi.gaussian_filter(rng.random((7, 9, 5)), 1) > 0.5).astype(np.uint8)
    target_vs = (1.74, 2.0, 2.0)
    factors = np.asarray((8.0, 8.0, 8.0)) / np.asarray(target_vs)
    shape = tuple(int(round(n * f)) for n, f in zip(mask.shape, factors, strict=True))  # 32, 36, 20
    out = match_crop_space(mask, (8, 8, 8), (0, 0, 0), False, Grid(target_vs, (0, 0, 0), shape),
                           tmp_path)
    # skimage's rescale when enlarging: scipy's zoom in grid mode, zeros outside, order 1
    zoom = np.asarray(shape) / np.asarray(mask.shape)
    want = ndi.zoom(mask.astype(np.float64), zoom, order=1, mode="grid-constant", cval=0,
                    grid_mode=True) > 0.5
    assert out.shape == shape == (32, 36, 20)
    assert np.array_equal(out, want)


def test_translation_snaps_to_the_target_grid_and_floors_the_offset() -> None:
    g = Grid((4.0, 4.0, 4.0), (12.0, 6.0, 0.0), (5, 5, 5))
    # z: snapped 0, diff -12 -> -3; y: 10 snaps to 8, diff 2 -> 0; x: 9 snaps to 8 -> 2
    assert offset((3.0, 10.0, 9.0), g).tolist() == [-3, 0, 2]
    # a translation that is not a multiple of the voxel size (1.74 nm z, as test crop 557)
    g = Grid((1.74, 2.0, 2.0), (23837.13, 7599.0, 35999.0), (4, 4, 4))
    assert offset((23840.0, 7600.0, 36000.0), g).tolist() == [1, 0, 0]


def test_placement_cuts_what_overhangs_and_pads_with_zero(tmp_path: Path) -> None:
    image = np.arange(1, 5 * 7 * 3 + 1, dtype=np.uint32).reshape(5, 7, 3)  # odd shape
    g = Grid((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (4, 4, 4))
    out = match_crop_space(image, (1, 1, 1), (-2.0, 1.0, 0.0), True, g, tmp_path)
    want = np.zeros((4, 4, 4), np.uint32)
    want[0:3, 1:4, 0:3] = image[2:5, 0:3, :]
    assert np.array_equal(out, want)
    assert placement((2, 2, 2), (5, 0, 0), (4, 4, 4)) is None  # nothing overlaps
    out = match_crop_space(image, (1, 1, 1), (9.0, 0.0, 0.0), True, g, tmp_path)
    assert out.shape == (4, 4, 4) and not out.any()


def test_a_source_much_larger_than_its_target_is_refused(tmp_path: Path) -> None:
    big = np.zeros((17, 16, 16), np.uint8)  # 4352 voxels against 1
    with pytest.raises(InputError, match=r"pred/crop1/mito: 4352.0x the voxels"):
        match_crop_space(big, (2, 2, 2), (0, 0, 0), False, Grid((32, 32, 32), (0, 0, 0), (1, 1, 1)),
                         tmp_path, "pred/crop1/mito")


def test_large_sources_are_rescaled_in_cubes_placed_like_the_official_loader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = np.repeat(np.arange(1, 13, dtype=np.uint32), 2).reshape(1, 1, 24)
    ids = np.broadcast_to(ids, (4, 4, 24)).copy()
    target = Grid((8, 8, 8), (0, 0, 0), (2, 2, 12))
    whole = match_crop_space(ids, (4, 4, 4), (0, 0, 0), True, target, tmp_path / "a")
    monkeypatch.setattr(resample, "CHUNKED_ABOVE_MIB", 0)
    monkeypatch.setattr(resample, "CUBE", 8)  # cubes that split x into 8 + 8 + 8
    cubed = match_crop_space(ids, (4, 4, 4), (0, 0, 0), True, target, tmp_path / "b")
    assert np.array_equal(np.asarray(cubed[...]), whole)  # aligned cubes: no seam
    # cube edge 5 -> starts 0, 5, 10, ...: int(5 * 0.5) = 2 but the first cube gave
    # round(2.5) = 2 voxels and the next cube's first voxel samples x = 5 (id 3) not x = 4
    monkeypatch.setattr(resample, "CUBE", 5)
    cubed = np.asarray(match_crop_space(ids, (4, 4, 4), (0, 0, 0), True, target,
                                        tmp_path / "c")[...])
    assert cubed.shape == (2, 2, 12)
    assert not np.array_equal(cubed, whole)  # the official seams, reproduced


def test_exact_placement_puts_an_upsampled_prediction_where_its_voxels_lie(
        tmp_path: Path) -> None:
    # 8 nm ids 1 2 3, voxel centres at 0, 8, 16 nm: at 4 nm they cover [-4, 20) nm, centres
    # -2, 2, ... 18. The truth grid's centres are 2, 6, ..., 18 (translation 2 nm), so its
    # first voxel is the second upsampled one: 1 2 2 3 3.
    ids = _line([1, 2, 3]).astype(np.uint32)
    target = Grid((8, 8, 4), (0, 0, 2), (1, 1, 5))
    exact = match_crop_space(ids, (8, 8, 8), (0, 0, 0), True, target, tmp_path / "e",
                             placement="exact")
    assert exact.ravel().tolist() == [1, 2, 2, 3, 3]
    # the official rule takes the 8 nm translation (0 nm) for the first 4 nm voxel's centre
    # and rounds -0.5 voxels toward zero: one voxel to the right of where it lies
    official = match_crop_space(ids, (8, 8, 8), (0, 0, 0), True, target, tmp_path / "o")
    assert official.ravel().tolist() == [1, 1, 2, 2, 3]


def test_exact_and_official_placement_agree_on_a_grid_aligned_prediction(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 2, (5, 6, 7)).astype(np.uint8)
    # same voxel size, translations multiples of it, the prediction two voxels in
    target = Grid((4, 4, 4), (8, 8, 8), (8, 9, 10))
    args = (mask, (4, 4, 4), (16, 16, 16), False, target)
    exact = match_crop_space(*args, tmp_path / "e", placement="exact")
    assert np.array_equal(exact, match_crop_space(*args, tmp_path / "o"))
    assert np.array_equal(exact[2:7, 2:8, 2:9], mask)
    # the same two grids moved by 2 nm (no longer multiples of 4 nm): the official rule snaps
    # the prediction's translation down to 16 nm and lands it one voxel short; exact does not
    moved = Grid((4, 4, 4), (10, 10, 10), (8, 9, 10))
    args = (mask, (4, 4, 4), (18, 18, 18), False, moved)
    assert np.array_equal(match_crop_space(*args, tmp_path / "e2", placement="exact"), exact)
    assert np.array_equal(match_crop_space(*args, tmp_path / "o2")[1:6, 1:7, 1:8], mask)
