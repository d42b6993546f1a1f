"""Dice (or Tversky) + BCE for multi-label sigmoid outputs with partial annotations and padded
voxels.

A channel not annotated in a sample contributes neither loss nor gradient: its "background"
is unknown, not negative. Padded voxels (valid = 0) are outside both terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, TverskyLoss
from torch import nn


class PartialAnnotationLoss(nn.Module):
    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        squared_pred: bool = True,
        overlap: str = "dice",
        tversky_alpha: float = 0.3,
        tversky_beta: float = 0.7,
    ) -> None:
        """`overlap`: "dice" (squared-prediction Dice, the spec's) or "tversky" (alpha weighs
        false positives, beta false negatives); `dice_weight` scales whichever is chosen."""
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        # probabilities go in already masked by `valid`, hence sigmoid=False; a masked voxel
        # has p = g = 0 and adds nothing to any sum of either index
        if overlap == "dice":
            self.dice = DiceLoss(sigmoid=False, squared_pred=squared_pred, smooth_nr=smooth_nr,
                                 smooth_dr=smooth_dr, reduction="none")
        elif overlap == "tversky":
            self.dice = TverskyLoss(sigmoid=False, alpha=tversky_alpha, beta=tversky_beta,
                                    smooth_nr=smooth_nr, smooth_dr=smooth_dr, reduction="none")
        else:
            raise ValueError(f"loss {overlap!r}: expected dice or tversky")
        weights = None if class_weights is None else torch.as_tensor(
            list(class_weights), dtype=torch.float32)
        # not persistent: checkpoints hold the network only, the weights come from the config
        self.register_buffer("class_weights", weights, persistent=False)

    def per_channel(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, C) loss per sample and channel over the valid voxels (valid=None: all)."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            target = target.float()
            spatial = tuple(range(2, logits.ndim))
            probs = torch.sigmoid(logits)
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            if valid is None:
                dice = self.dice(probs, target)
                bce = bce.mean(dim=spatial)
            else:
                # valid is binary, so masking both inputs restricts every Dice sum to it
                valid = valid.float()
                dice = self.dice(probs * valid, target * valid)
                bce = (bce * valid).sum(dim=spatial) / valid.sum(dim=spatial).clamp(min=1)
            return self.dice_weight * dice.flatten(1) + self.ce_weight * bce

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, annotation_mask: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar: per-channel losses x class weights x mask, summed over channels, divided by
        the sample's annotated channel count (at least 1), averaged over the batch."""
        per = self.per_channel(logits, target, valid)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            mask = annotation_mask.float()
            if self.class_weights is not None:
                per = per * self.class_weights
            annotated = mask.sum(dim=1).clamp(min=1)
            return ((per * mask).sum(dim=1) / annotated).mean()
