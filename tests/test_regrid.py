"""Exact placement a target block at a time (data.regrid) against the whole-array rescale."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellmapseg.data import resample
from cellmapseg.data.manifest import Grid
from cellmapseg.data.regrid import resample_exact, rescaled_shape


def _case(rng: np.random.Generator, instance: bool, shape: tuple[int, ...]) -> np.ndarray:
    smooth = ndi.gaussian_filter(rng.random(shape), 1) > 0.5
    if instance:
        return ndi.label(smooth)[0].astype(np.uint32)
    return smooth.astype(np.uint8)


def _whole_values(source: np.ndarray, src_vs, tgt_vs) -> np.ndarray:
    """skimage's interpolated (pre-threshold) values, for telling ties from errors."""
    from skimage.transform import rescale
    return rescale(source.astype(np.float32), np.asarray(src_vs) / np.asarray(tgt_vs), order=1,
                   mode="constant", preserve_range=True)


CASES = [  # source voxel size, target voxel size: up, down, anisotropic, mixed
    ((8.0, 8.0, 8.0), (4.0, 4.0, 4.0)),
    ((8.0, 8.0, 8.0), (2.0, 2.0, 2.0)),
    ((8.0, 8.0, 8.0), (1.74, 2.0, 2.0)),
    ((4.0, 4.0, 4.0), (8.0, 8.0, 8.0)),
    ((2.0, 4.0, 8.0), (4.0, 4.0, 3.0)),
    ((8.0, 8.0, 8.0), (16.0, 2.0, 5.0)),
]


@pytest.mark.parametrize("instance", [False, True])
@pytest.mark.parametrize(("src_vs", "tgt_vs"), CASES)
def test_blocks_give_the_whole_array_rescale_at_the_exact_placement(tmp_path: Path, src_vs,
                                                                   tgt_vs, instance) -> None:
    rng = np.random.default_rng(hash((src_vs, tgt_vs, instance)) % 2**32)
    source = _case(rng, instance, (13, 17, 11))  # odd shapes
    translation = tuple(rng.uniform(-40, 40, 3))  # not multiples of either voxel size
    target = Grid(tgt_vs, tuple(np.asarray(translation) + rng.uniform(-10, 10, 3)), (37, 29, 41))
    want = np.asarray(resample.match_crop_space(source, src_vs, translation, instance, target,
                                                tmp_path / "whole", placement="exact")[...])
    rel = resample.exact_offset(src_vs, translation, target)
    got = resample_exact(source, np.asarray(src_vs) / np.asarray(tgt_vs), instance, rel, target,
                         tmp_path / "blocks.npy", block=(5, 7, 9))[...]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert want.any(), "the case must put something on the target"
    differ = got != want
    if instance:
        assert not differ.any()
    else:  # only a value within rounding of 0.5 may land on the other side
        values = _whole_values(source, src_vs, tgt_vs)
        image, dst = resample.placement(values.shape, rel, target.shape)
        ties = np.zeros(target.shape, bool)
        ties[dst] = np.abs(values[image] - 0.5) < 1e-5
        assert not (differ & ~ties).any()


def test_the_rescaled_image_is_cut_where_it_overhangs_and_zero_where_it_is_absent(
        tmp_path: Path) -> None:
    source = np.ones((4, 4, 4), np.uint8)
    target = Grid((4.0, 4.0, 4.0), (0.0, 0.0, 0.0), (12, 12, 12))
    out = resample_exact(source, (2.0, 2.0, 2.0), False, (-2, 6, 0), target,
                         tmp_path / "o.npy", block=(5, 5, 5))[...]
    # rescaled 8 voxels from -2 (z 0..5), from 6 (y 6..11), from 0 (x 0..7); its faces
    # interpolate with the zeros outside (0.75 per face: an edge passes, a corner does not)
    assert out[:5, 7:11, 1:7].all() and not out[5, 6, 0]
    assert not out[6:].any() and not out[:, :6].any() and not out[:, :, 8:].any()
    far = resample_exact(source, (2.0, 2.0, 2.0), False, (50, 0, 0), target,
                         tmp_path / "far.npy")[...]
    assert not far.any()


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_a_block_not_by_the_crop(tmp_path: Path) -> None:
    # 8 nm -> 2 nm: 40^3 source voxels become 160^3 (4.1 M) target voxels
    source = _case(np.random.default_rng(0), False, (40, 40, 40))
    target = Grid((2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (160, 160, 160))
    whole = _peak(lambda: resample.match_crop_space(source, (8, 8, 8), (3.0, 3.0, 3.0), False,
                                                    target, tmp_path / "w", placement="exact"))
    blocks = _peak(lambda: resample_exact(source, (4.0, 4.0, 4.0), False, (0, 0, 0), target,
                                          tmp_path / "b.npy", block=(32, 32, 32)))
    assert whole > 4 * 160 ** 3  # the float32 rescaled image at least
    assert blocks < 20 * 32 ** 3 + source.nbytes * 5  # a block's values and its region
    assert blocks * 10 < whole


def test_match_crop_space_switches_to_blocks_above_its_limit(tmp_path: Path,
                                                             monkeypatch) -> None:
    source = _case(np.random.default_rng(3), True, (9, 10, 11))
    target = Grid((2.0, 2.0, 2.0), (5.0, -7.0, 1.0), (30, 40, 20))
    args = (source, (8.0, 8.0, 8.0), (0.0, 0.0, 0.0), True, target)
    whole = resample.match_crop_space(*args, tmp_path / "a", placement="exact")
    assert isinstance(whole, np.ndarray)
    monkeypatch.setattr(resample, "EXACT_WHOLE_MAX_VOXELS",
                        int(np.prod(rescaled_shape(source.shape, (4, 4, 4)))) - 1)
    blocks = resample.match_crop_space(*args, tmp_path / "b", placement="exact")
    assert not isinstance(blocks, np.ndarray)
    assert np.array_equal(blocks[...], whole)
