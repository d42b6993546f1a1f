"""PartialAnnotationLoss: no gradient from unannotated channels or padding; exact weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellmapseg.models import PartialAnnotationLoss

C = 14


def make_case(seed: int = 0, batch: int = 2, side: int = 4):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, C, side, side, side)
    logits = torch.randn(shape, generator=g) * 2
    target = (torch.rand(shape, generator=g) > 0.7).float()
    valid = torch.ones(batch, 1, side, side, side)
    valid[:, :, :, :, side // 2:] = 0  # half of each sample is padding
    mask = (torch.rand(batch, C, generator=g) > 0.5).float()
    mask[:, 0] = 1
    mask[:, 1] = 0
    return logits.requires_grad_(), target, mask, valid


def numpy_per_channel(logits, target, valid, dice_w: float, ce_w: float) -> np.ndarray:
    """Independent float64 Dice (squared predictions and targets) + BCE over valid voxels."""
    lg = logits.detach().double().numpy().reshape(*logits.shape[:2], -1)
    t = target.double().numpy().reshape(*target.shape[:2], -1)
    v = valid.double().numpy().reshape(valid.shape[0], 1, -1)
    p = 1 / (1 + np.exp(-lg))
    inter = (p * t * v).sum(-1)
    den = (p**2 * v).sum(-1) + (t**2 * v).sum(-1)
    dice = 1 - (2 * inter + 1e-5) / (den + 1e-5)
    bce = np.maximum(lg, 0) - lg * t + np.log1p(np.exp(-np.abs(lg)))
    bce = (bce * v).sum(-1) / v.sum(-1)
    return dice_w * dice + ce_w * bce


def test_unannotated_channels_get_exactly_zero_gradient():
    logits, target, mask, valid = make_case()
    PartialAnnotationLoss().forward(logits, target, mask, valid).backward()
    grad = logits.grad
    off = mask == 0
    assert torch.all(grad[off] == 0)
    assert torch.all(grad[mask == 1].abs().sum(dim=(1, 2, 3)) > 0)


def test_all_zero_mask_gives_exact_zero_loss_and_zero_gradients():
    logits, target, _, valid = make_case()
    loss = PartialAnnotationLoss([2.0] * C)(logits, target, torch.zeros(2, C), valid)
    loss.backward()
    assert loss.item() == 0.0
    assert not torch.isnan(logits.grad).any()
    assert torch.all(logits.grad == 0)


def test_fully_padded_sample_gives_finite_loss_and_gradients():
    logits, target, mask, valid = make_case()
    valid[1] = 0
    loss = PartialAnnotationLoss()(logits, target, mask, valid)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(logits.grad[1] == 0)


def test_forward_weights_per_channel_terms_exactly_as_hand_computed():
    logits, target, mask, valid = make_case(seed=1)
    weights = torch.arange(1, C + 1, dtype=torch.float32) / 4
    loss_fn = PartialAnnotationLoss(weights.tolist(), dice_weight=0.7, ce_weight=1.3)
    per = loss_fn.per_channel(logits, target, valid).detach()
    hand = torch.stack([
        sum(weights[c] * mask[b, c] * per[b, c] for c in range(C)) / max(mask[b].sum(), 1)
        for b in range(2)
    ]).mean()
    loss = loss_fn(logits, target, mask, valid)
    assert loss.item() == pytest.approx(hand.item(), rel=1e-6)
    # doubling one annotated class's weight adds exactly its share again
    weights2 = weights.clone()
    weights2[0] *= 2
    loss2 = PartialAnnotationLoss(weights2.tolist(), 0.7, 1.3)(logits, target, mask, valid)
    extra = (weights[0] * per[:, 0] * mask[:, 0] / mask.sum(1).clamp(min=1)).mean()
    assert (loss2 - loss).item() == pytest.approx(extra.item(), rel=1e-5)


def test_per_channel_matches_an_independent_numpy_dice_plus_bce():
    logits, target, _, valid = make_case(seed=2)
    per = PartialAnnotationLoss(dice_weight=0.7, ce_weight=1.3).per_channel(logits, target, valid)
    expected = numpy_per_channel(logits, target, valid, 0.7, 1.3)
    np.testing.assert_allclose(per.detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)
    all_valid = PartialAnnotationLoss().per_channel(logits, target)
    np.testing.assert_allclose(all_valid.detach().double().numpy(),
                               numpy_per_channel(logits, target, torch.ones_like(valid), 1, 1),
                               rtol=1e-5, atol=1e-6)


def test_padded_voxels_do_not_affect_the_loss():
    logits, target, mask, valid = make_case(seed=3)
    loss_fn = PartialAnnotationLoss()
    loss = loss_fn(logits, target, mask, valid)
    pad = (valid == 0).expand_as(target)
    logits2 = logits.detach().clone()
    logits2[pad] = 50.0
    target2 = target.clone()
    target2[pad] = 1 - target2[pad]
    logits2.requires_grad_()
    loss2 = loss_fn(logits2, target2, mask, valid)
    assert loss2.item() == loss.item()
    loss2.backward()
    assert torch.all(logits2.grad[pad] == 0)


def test_loss_under_bf16_autocast_is_float32_and_close_to_fp32():
    logits, target, mask, valid = make_case(seed=4)
    loss_fn = PartialAnnotationLoss([1.0] * 7 + [3.0] * 7)
    ref = loss_fn(logits, target, mask, valid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(logits.bfloat16(), target, mask, valid)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=2e-2)


def test_tversky_with_equal_weights_is_dice_of_unsquared_predictions():
    logits, target, mask, valid = make_case(seed=3)
    tversky = PartialAnnotationLoss(overlap="tversky", tversky_alpha=0.5, tversky_beta=0.5,
                                    ce_weight=0.0)
    dice = PartialAnnotationLoss(squared_pred=False, ce_weight=0.0)
    torch.testing.assert_close(tversky(logits, target, mask, valid),
                               dice(logits, target, mask, valid), rtol=1e-6, atol=1e-7)


def test_tversky_beta_above_alpha_costs_missed_foreground_more_than_extra_foreground():
    two, one = torch.zeros(1, C, 4, 4, 4), torch.zeros(1, C, 4, 4, 4)
    two[:, :, :2], one[:, :, :1] = 1, 1  # 32 and 16 foreground voxels per channel
    logits_one, logits_two = (one * 40 - 20), (two * 40 - 20)
    mask = torch.ones(1, C)
    loss = PartialAnnotationLoss(overlap="tversky", tversky_alpha=0.3, tversky_beta=0.7,
                                 ce_weight=0.0)
    # 16 found of 32 (16 missed) against 16 found plus 16 extra: the same Dice
    missed, extra = loss(logits_one, two, mask), loss(logits_two, one, mask)
    assert missed > extra
    dice = PartialAnnotationLoss(squared_pred=False, ce_weight=0.0)
    torch.testing.assert_close(dice(logits_one, two, mask), dice(logits_two, one, mask),
                               rtol=1e-5, atol=1e-6)


def test_tversky_gives_unannotated_channels_and_padding_exactly_zero_gradient():
    logits, target, mask, valid = make_case(seed=4)
    loss = PartialAnnotationLoss(overlap="tversky")
    loss(logits, target, mask, valid).backward()
    grad = logits.grad
    assert torch.all(grad[mask == 0] == 0)
    assert torch.all(grad.transpose(0, 1)[:, valid[:, 0] == 0] == 0)
