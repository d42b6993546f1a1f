"""Compact patch sampling and the device-side batch preparation (spec §10 data items)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import NUM_CHANNELS, ONTOLOGY
from torch.utils.data import DataLoader

from cellmapseg.data.batch import prepare_batch
from cellmapseg.data.compact import PAD_LABEL
from cellmapseg.data.sampling import (
    EpochSampler,
    PatchDataset,
    collate_patches,
    crop_or_pad,
    flip_rotate,
    seed_worker,
)
from cellmapseg.data.volumes import ListSource, Volume

ROI = (16, 16, 16)
LABELS = ONTOLOGY.labels  # 1..14: channel c is label value c + 1


def make_volume(shape=(24, 28, 20), seed=0, name="v", mask=None) -> Volume:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 253, size=shape).astype(np.uint8)
    label = (image % 15).astype(np.uint8)  # label derived from the image: alignment is checkable
    mask = np.ones(NUM_CHANNELS, np.float32) if mask is None else mask
    return Volume(name, image, label, mask, float(image.mean()), float(image.std()))


def loader(dataset, **kw):
    return DataLoader(dataset, collate_fn=collate_patches, worker_init_fn=seed_worker, **kw)


def test_items_have_the_spec_shapes_after_prepare_batch():
    ds = PatchDataset(ListSource([make_volume()]), ROI, num_samples=4, sub_epochs=1, seed=1)
    batch = prepare_batch(collate_patches([ds[0], ds[0]]), LABELS, "cpu")
    assert batch.input.shape == (8, 1, *ROI) and batch.input.dtype == torch.float32
    assert batch.target.shape == (8, NUM_CHANNELS, *ROI)
    assert batch.annotation_mask.shape == (8, NUM_CHANNELS)
    assert batch.valid.shape == (8, 1, *ROI)


def test_compact_items_are_uint8():
    item = PatchDataset(ListSource([make_volume()]), ROI, 2, 1, seed=0)[0]
    assert item["image"].dtype == np.uint8 and item["label"].dtype == np.uint8
    assert item["image"].shape == (2, 1, *ROI) and item["label"].shape == (2, *ROI)


def test_label_value_3_becomes_channel_2():
    label = torch.zeros((1, 4, 4, 4), dtype=torch.uint8)
    label[0, 1, 2, 3] = 3
    batch = {
        "image": torch.zeros((1, 1, 4, 4, 4), dtype=torch.uint8),
        "label": label,
        "annotation_mask": torch.ones((1, NUM_CHANNELS)),
        "norm": torch.tensor([[0.0, 1.0]]),
    }
    target = prepare_batch(batch, LABELS).target
    assert target[0, 2, 1, 2, 3] == 1.0
    assert target.sum() == 1.0


def test_every_label_value_maps_to_its_own_channel_and_zero_to_none():
    label = torch.arange(0, 15, dtype=torch.uint8).view(1, 15, 1, 1).expand(1, 15, 2, 2)
    batch = {
        "image": torch.zeros((1, 1, 15, 2, 2), dtype=torch.uint8), "label": label.contiguous(),
        "annotation_mask": torch.ones((1, NUM_CHANNELS)), "norm": torch.tensor([[0.0, 1.0]]),
    }
    target = prepare_batch(batch, LABELS).target[0]
    assert target[:, 0].sum() == 0  # value 0 = unknown/background: no channel
    for value in range(1, 15):
        assert target[value - 1, value].all() and target[:, value].sum() == 4


def test_channels_follow_the_ontology_label_values_not_their_order():
    """Channel c is label value labels[c]: values need not be 1..C nor ascending."""
    label = torch.tensor([0, 3, 7, 9], dtype=torch.uint8).view(1, 4, 1, 1)
    batch = {
        "image": torch.zeros((1, 1, 4, 1, 1), dtype=torch.uint8), "label": label,
        "annotation_mask": torch.ones((1, 2)), "norm": torch.tensor([[0.0, 1.0]]),
    }
    target = prepare_batch(batch, (9, 3)).target[0, :, :, 0, 0]
    assert target.tolist() == [[0, 0, 0, 1], [0, 1, 0, 0]]  # 7 is no class here


def test_normalisation_uses_the_whole_crop_statistics():
    vol = make_volume()
    ds = PatchDataset(ListSource([vol]), ROI, 1, 1, seed=0)
    item = ds[0]
    x = prepare_batch(collate_patches([item]), LABELS).input
    expected = (item["image"].astype(np.float32) - vol.mean) / vol.std
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_empty_annotation_gives_an_all_zero_mask():
    vol = make_volume(mask=np.zeros(NUM_CHANNELS, np.float32))
    batch = prepare_batch(collate_patches([PatchDataset(ListSource([vol]), ROI, 3, 1, 0)[0]]),
                          LABELS)
    assert batch.annotation_mask.shape == (3, NUM_CHANNELS)
    assert batch.annotation_mask.sum() == 0


@pytest.mark.parametrize("shape", [(10, 28, 20), (5, 6, 7), (16, 16, 16), (40, 9, 16)])
def test_a_crop_smaller_than_the_roi_yields_full_size_patches(shape):
    vol = make_volume(shape=shape)
    ds = PatchDataset(ListSource([vol]), ROI, num_samples=4, sub_epochs=3, seed=5)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (4, 1, *ROI) and item["label"].shape == (4, *ROI)
        real = item["label"] != PAD_LABEL
        # exactly the crop's extent (clipped to the ROI) is real, the rest is padding
        expected = np.prod([min(n, r) for n, r in zip(shape, ROI, strict=True)])
        assert (real.reshape(4, -1).sum(1) == expected).all()


def test_padded_voxels_are_invalid_and_belong_to_no_class():
    vol = make_volume(shape=(6, 16, 16))
    ds = PatchDataset(ListSource([vol]), ROI, 2, 1, seed=0, pad_image="mean")
    item = ds[0]
    batch = prepare_batch(collate_patches([item]), LABELS)
    pad = torch.from_numpy(item["label"] == PAD_LABEL).unsqueeze(1)
    assert pad.any()
    assert (batch.valid[pad] == 0).all() and (batch.valid[~pad] == 1).all()
    assert batch.target.masked_select(pad.expand_as(batch.target)).sum() == 0
    # the image is padded with the crop's mean: 0 after normalisation
    assert batch.input[pad].abs().max() < 0.5 / vol.std


def test_numeric_pad_value_is_used_for_the_image():
    vol = make_volume(shape=(6, 16, 16))
    item = PatchDataset(ListSource([vol]), ROI, 1, 1, seed=0, pad_image=7)[0]
    assert (item["image"][:, 0][item["label"] == PAD_LABEL] == 7).all()


def test_image_and_label_stay_aligned_under_every_flip_and_rotation():
    vol = make_volume(shape=(20, 20, 20))
    seen = set()
    for seed in range(200):
        rng = np.random.default_rng(seed)
        img, lab = crop_or_pad(vol.image, vol.label, ROI, rng, fill=0)
        img, lab = flip_rotate(img, lab, rng)
        np.testing.assert_array_equal(lab, img % 15)
        seen.add(img.tobytes()[:64])
    assert len(seen) > 100


def test_flip_rotate_covers_all_flips_and_rotations():
    """Flips of 3 axes and rot90 in (0, 1) generate 16 distinct orientations (the dihedral group
    of the (0, 1) plane times the flip of axis 2); all of them occur."""
    base = np.arange(8 * 8 * 8, dtype=np.int32).reshape(8, 8, 8)
    variants = set()
    for seed in range(400):
        img, _ = flip_rotate(base, base, np.random.default_rng(seed))
        variants.add(img.tobytes())
    assert len(variants) == 16


def test_non_square_roi_keeps_its_shape_under_rotation():
    vol = make_volume(shape=(30, 30, 30))
    ds = PatchDataset(ListSource([vol]), (8, 16, 12), 4, 20, seed=0)
    assert all(ds[i]["image"].shape == (4, 1, 8, 16, 12) for i in range(len(ds)))


def test_sub_epochs_repeat_each_volume():
    vols = [make_volume(seed=i, name=f"v{i}") for i in range(3)]
    assert len(PatchDataset(ListSource(vols), ROI, 1, sub_epochs=10, seed=0)) == 30


def test_patches_are_a_function_of_seed_epoch_and_index_only():
    ds = PatchDataset(ListSource([make_volume()]), ROI, 2, 4, seed=3)
    np.testing.assert_array_equal(ds[(1, 2)]["image"], ds[(1, 2)]["image"])
    assert not np.array_equal(ds[(1, 2)]["image"], ds[(2, 2)]["image"])
    other = PatchDataset(ListSource([make_volume()]), ROI, 2, 4, seed=4)
    assert not np.array_equal(ds[(1, 2)]["image"], other[(1, 2)]["image"])


def _draws(num_workers: int, epoch: int = 0, seed: int = 0) -> list[bytes]:
    ds = PatchDataset(ListSource([make_volume(shape=(40, 40, 40))]), ROI, 2, 8, seed=seed)
    sampler = EpochSampler(ds, rank=0, world_size=1, seed=seed)
    sampler.set_epoch(epoch)
    out = []
    for batch in loader(ds, batch_size=2, sampler=sampler, num_workers=num_workers):
        out.extend(p.numpy().tobytes() for p in batch["image"])
    return out


def test_different_workers_draw_different_crops():
    draws = _draws(num_workers=2)
    assert len(draws) == 16 and len(set(draws)) == 16


def test_draws_are_reproducible_and_independent_of_worker_count():
    assert _draws(num_workers=2) == _draws(num_workers=0) == _draws(num_workers=2)
    assert _draws(num_workers=2, epoch=1) != _draws(num_workers=2, epoch=0)


def test_ranks_see_disjoint_items():
    ds = PatchDataset(ListSource([make_volume(seed=i) for i in range(4)]), ROI, 1, 2, seed=0)
    keys = [set(EpochSampler(ds, rank=r, world_size=2, seed=0)) for r in range(2)]
    assert keys[0].isdisjoint(keys[1]) and len(keys[0] | keys[1]) == len(ds)


def test_mixed_image_dtypes_collate_to_a_common_dtype():
    a = make_volume()
    b_img = a.image.astype(np.float32) + 0.5
    b = Volume("b", b_img, a.label, a.annotation_mask, a.mean, a.std)
    ds = PatchDataset(ListSource([a, b]), ROI, 1, 1, seed=0)
    batch = collate_patches([ds[0], ds[1]])
    assert batch["image"].dtype == torch.float32 and batch["image"].shape[0] == 2
