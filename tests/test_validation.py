"""Validation during training: the block-wise predictor's tp/fp/fn per channel equal the
whole-volume computation it replaced (one Gaussian sliding window over the whole crop with the
whole crop's one-hot target on the device) exactly, and only annotated channels are recorded."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import NUM_CHANNELS, ONTOLOGY, tiny_model

from cellmapseg.config import from_dict
from cellmapseg.data.batch import prepare_batch
from cellmapseg.data.volumes import ListSource, Volume
from cellmapseg.models.net import Net
from cellmapseg.predict.window import binarise, sliding_window_logits
from cellmapseg.train.validation import confusion_counts, score_volume, score_volumes


def whole_volume_counts(net: Net, volume: Volume, roi, cfg) -> np.ndarray:
    """The validation this replaced: the whole crop's input, logits and one-hot target."""
    batch = prepare_batch({
        "image": torch.from_numpy(volume.image[None, None]),
        "label": torch.from_numpy(volume.label[None]),
        "annotation_mask": torch.from_numpy(volume.annotation_mask[None]),
        "norm": torch.tensor([[volume.mean, volume.std]], dtype=torch.float32),
    }, ONTOLOGY.labels, "cpu")
    logits = sliding_window_logits(net.predict, batch.input, roi, cfg)
    pred = binarise(logits, cfg.thresholds(NUM_CHANNELS))[0]
    return confusion_counts(pred, batch.target[0] > 0.5).numpy()


def volume(shape, seed: int, annotated=(0, 2, 3, 13)) -> Volume:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 253, shape).astype(np.uint8)
    label = rng.integers(0, NUM_CHANNELS + 1, shape).astype(np.uint8)
    mask = np.zeros(NUM_CHANNELS, np.float32)
    mask[list(annotated)] = 1
    return Volume(f"crop{seed}", image, label, mask, float(image.mean()), float(image.std()))


@pytest.fixture(scope="module")
def net_and_cfg():
    cfg = from_dict({"models": {"tiny": tiny_model()},
                     "inference": {"sw_batch_size": 1, "block_size": 24, "overlap": 0.5}})
    torch.manual_seed(0)
    return Net(cfg.model("tiny"), cfg.classes).eval(), cfg


@pytest.mark.parametrize("shape", [(40, 36, 44), (16, 50, 20), (10, 12, 30)])
def test_block_wise_counts_equal_the_whole_volume_counts(net_and_cfg, shape):
    net, cfg = net_and_cfg
    roi = cfg.model("tiny").roi_size
    v = volume(shape, seed=sum(shape))
    with torch.no_grad():
        blocks = score_volume(net.predict, v, roi, cfg.inference, torch.device("cpu"),
                              ONTOLOGY.labels)
        whole = whole_volume_counts(net, v, roi, cfg.inference)
    np.testing.assert_array_equal(blocks, whole)
    assert blocks[:, 0].sum() > 0 and blocks[:, 1].sum() > 0  # both outcomes occur


def test_block_size_does_not_change_the_counts(net_and_cfg):
    net, cfg = net_and_cfg
    roi = cfg.model("tiny").roi_size
    v, cpu = volume((48, 40, 36), seed=7), torch.device("cpu")
    with torch.no_grad():
        counts = [score_volume(net.predict, v, roi, replace(cfg.inference, block_size=b), cpu,
                               ONTOLOGY.labels)
                  for b in (16, 24, 64)]
    np.testing.assert_array_equal(counts[0], counts[1])
    np.testing.assert_array_equal(counts[0], counts[2])


def test_only_annotated_channels_are_recorded(net_and_cfg):
    net, cfg = net_and_cfg
    source = ListSource([volume((20, 20, 20), 1, (0, 5)), volume((20, 24, 20), 2, (13,))])
    with torch.no_grad():
        records = score_volumes(net.predict, source, range(2), cfg.model("tiny").roi_size,
                                cfg.inference, torch.device("cpu"), ONTOLOGY.labels)
    assert [(r["crop"], r["channel"]) for r in records] == [
        ("crop1", 0), ("crop1", 5), ("crop2", 13)]
    assert all(r["tp"] + r["fn"] > 0 for r in records)
