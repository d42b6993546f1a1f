"""Test-time augmentation: which transforms, that each maps back onto the input's voxels, and
that it changes nothing for a network that is equivariant to them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellmapseg.config import from_dict
from cellmapseg.predict.blocks import predict_blocks
from cellmapseg.predict.tta import IDENTITY, Transform, rotation_planes, transforms

CFG = from_dict({"inference": {"overlap": 0.5, "sw_batch_size": 2}}).inference


def test_isotropic_data_get_every_flip_set_and_quarter_turns_in_three_planes():
    t = transforms(True, True, (8.0, 8.0, 8.0))
    assert len(t) == 8 + 6 and t[0] == Transform()
    assert len(set(t)) == len(t)
    assert {x.plane for x in t if x.turns} == {(0, 1), (0, 2), (1, 2)}


def test_rotations_stay_in_planes_of_equal_voxel_size():
    assert rotation_planes((1.74, 2.0, 2.0)) == ((1, 2),)
    assert rotation_planes((8.0, 4.0, 2.0)) == ()
    assert len(transforms(True, True, (1.74, 2.0, 2.0))) == 8 + 2
    assert len(transforms(False, True, (8.0, 4.0, 2.0))) == 1
    assert transforms(False, False, (8.0,) * 3) == IDENTITY


@pytest.mark.parametrize("t", transforms(True, True, (8.0, 8.0, 8.0)), ids=lambda t: t.name)
def test_each_transform_maps_the_output_back_onto_the_input(t):
    x = torch.arange(2 * 3 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 3, 4, 5, 6)
    if t.turns:  # a quarter turn swaps two axes: give them one size
        x = torch.arange(2 * 3 * 5 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5, 5)
    assert torch.equal(t.invert(t.apply(x)), x)
    if t != Transform():
        assert not torch.equal(t.apply(x), x)


class Pointwise(torch.nn.Module):
    """A 1x1x1 convolution: equivariant to every flip and rotation."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Shifted(torch.nn.Module):
    """A convolution whose kernel looks one way only: not equivariant to flips."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, 0, 0, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _logits(net: torch.nn.Module, image: np.ndarray, tta) -> np.ndarray:
    out = np.zeros((3, *image.shape), np.float32)
    with torch.no_grad():
        for core, logits in predict_blocks(net, image, 0.0, 1.0, (8, 8, 8), CFG, (12, 12, 12),
                                           torch.device("cpu"), tta):
            out[(slice(None), *core)] = logits.numpy()
    return out


def test_tta_of_an_equivariant_network_equals_no_tta():
    image = np.random.default_rng(1).normal(size=(20, 18, 16)).astype(np.float32)
    net = Pointwise().eval()
    plain = _logits(net, image, IDENTITY)
    augmented = _logits(net, image, transforms(True, True, (8.0, 8.0, 8.0)))
    np.testing.assert_allclose(augmented, plain, rtol=0, atol=1e-5)


def test_tta_of_a_network_that_sees_one_direction_changes_its_output():
    image = np.random.default_rng(2).normal(size=(20, 18, 16)).astype(np.float32)
    net = Shifted().eval()
    plain = _logits(net, image, IDENTITY)
    augmented = _logits(net, image, transforms(True, False, (8.0, 8.0, 8.0)))
    assert np.abs(augmented - plain).max() > 0.1
