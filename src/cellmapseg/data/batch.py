"""Turn a compact batch into network input and one target channel per atomic class on whatever
device it sits on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cellmapseg.data.compact import PAD_LABEL


@dataclass
class Batch:
    input: torch.Tensor  # (N, 1, D, H, W) float32, normalised per crop (zero mean, unit std)
    target: torch.Tensor  # (N, C, D, H, W) float32 binary, channel c = (label == labels[c])
    annotation_mask: torch.Tensor  # (N, C) float32
    valid: torch.Tensor  # (N, 1, D, H, W) float32, 0 on padded voxels


def prepare_batch(
    batch: dict[str, torch.Tensor], labels: Sequence[int],
    device: torch.device | str | None = None,
) -> Batch:
    """Normalise and one-hot a compact batch (channel c = label value `labels[c]`). Move it to
    `device` first (non-blocking) so the expansion to float channels happens there (on the GPU
    during training)."""
    device = torch.device(device) if device is not None else batch["image"].device
    image = batch["image"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True)
    norm = batch["norm"].to(device, non_blocking=True).float()
    mean = norm[:, 0].view(-1, 1, 1, 1, 1)
    std = norm[:, 1].clamp_min(1e-6).view(-1, 1, 1, 1, 1)
    x = (image.float() - mean) / std
    values = torch.tensor(list(labels), device=device, dtype=label.dtype)
    target = (label.unsqueeze(1) == values.view(1, -1, 1, 1, 1)).float()
    valid = (label != PAD_LABEL).unsqueeze(1).float()
    mask = batch["annotation_mask"].to(device, non_blocking=True).float()
    return Batch(input=x, target=target, annotation_mask=mask, valid=valid)
