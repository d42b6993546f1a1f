"""Block-wise prediction equals MONAI's whole-volume sliding window, with bounded regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from cellmapseg.blockwise import spans as blocks
from cellmapseg.config import from_dict
from cellmapseg.predict.blocks import predict_blocks, region, window_starts


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 14, 3, padding=1)
    ).eval()


def whole(model, image, roi, cfg) -> torch.Tensor:
    x = torch.from_numpy(image.astype(np.float32))[None, None]
    with torch.no_grad():
        return sliding_window_inference(x, list(roi), cfg.sw_batch_size, model, cfg.overlap,
                                        mode="gaussian", sigma_scale=cfg.sigma_scale)[0]


def blockwise(model, image, roi, cfg, block) -> torch.Tensor:
    out = torch.zeros((14, *image.shape))
    with torch.no_grad():
        for core, logits in predict_blocks(model, image, 0.0, 1.0, roi, cfg, block,
                                           torch.device("cpu")):
            out[(slice(None), *core)] = logits
    return out


@pytest.mark.parametrize(
    ("shape", "roi", "block", "overlap"),
    [
        ((40, 36, 44), (16, 16, 16), (16, 16, 16), 0.5),   # block = roi
        ((37, 29, 41), (16, 16, 16), (20, 12, 24), 0.5),   # nothing divides anything
        ((50, 33, 27), (16, 12, 20), (32, 32, 32), 0.25),  # anisotropic roi, other overlap
        ((10, 40, 12), (16, 16, 16), (8, 16, 8), 0.5),     # smaller than the roi on two axes
        ((9, 7, 11), (16, 16, 16), (4, 4, 4), 0.5),        # smaller than the roi everywhere
    ],
)
def test_blockwise_prediction_equals_the_whole_volume_run(shape, roi, block, overlap):
    cfg = from_dict({"inference": {"overlap": overlap, "sw_batch_size": 3}}).inference
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    model = tiny_model()
    expected = whole(model, image, roi, cfg)
    got = blockwise(model, image, roi, cfg, block)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_no_seams_at_block_borders():
    """The voxels on either side of every block border carry the whole-volume values."""
    cfg = from_dict({}).inference
    image = np.random.default_rng(2).normal(size=(30, 30, 30)).astype(np.float32)
    model = tiny_model()
    diff = (blockwise(model, image, (16, 16, 16), cfg, (10, 10, 10))
            - whole(model, image, (16, 16, 16), cfg)).abs()
    for axis in range(3):
        border = diff.index_select(axis + 1, torch.tensor([9, 10, 19, 20]))
        assert border.max() < 1e-5


def test_window_starts_follow_monai():
    assert window_starts(40, 16, 0.5) == [0, 8, 16, 24]
    assert window_starts(37, 16, 0.5) == [0, 8, 16, 21]
    assert window_starts(10, 16, 0.5) == [0]
    assert window_starts(16, 16, 0.5) == [0]


def test_regions_are_bounded_by_block_plus_a_window_per_side():
    size, roi = 3000, 128
    for core in [(0, 256), (256, 512), (2816, 3000)]:
        a, b = region(core, size, roi, 0.5)
        assert a <= core[0] and b >= core[1]
        assert (b - a) <= (core[1] - core[0]) + 2 * roi


def test_blocks_tile_the_volume_exactly_once():
    cover = np.zeros((37, 29, 41), int)
    for core in blocks(cover.shape, (16, 10, 32)):
        cover[tuple(slice(*c) for c in core)] += 1
    assert (cover == 1).all()


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal labelings up to renumbering: the (a, b) pairs form a bijection."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0)
    return (len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1])))


@pytest.mark.parametrize("block", [(5, 7, 6), (8, 8, 8), (40, 40, 40)])
def test_blockwise_components_equal_whole_volume_26_connectivity(block):
    from scipy import ndimage as ndi

    from cellmapseg.blockwise import STRUCTURE_26, label_block, merge

    rng = np.random.default_rng(0)
    mask = rng.random((23, 19, 21)) > 0.8  # many diagonal-only contacts across block borders
    out = np.zeros(mask.shape, np.uint32)
    count = 0
    for core in blocks(mask.shape, block):
        window = tuple(slice(*c) for c in core)
        out[window], n = label_block(mask[window], count)
        count += n
    n_final = merge(out, block, count)
    whole, n_whole = ndi.label(mask, structure=STRUCTURE_26)
    assert n_final == n_whole
    assert _same_partition(out, whole)
    np.testing.assert_array_equal(out, whole)  # even the numbering matches the whole-crop run
    assert out.max() == n_whole and set(np.unique(out)) == set(range(n_whole + 1))
