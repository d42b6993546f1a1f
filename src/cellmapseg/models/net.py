"""Network + Mixup + loss in one module, so one autocast region (and one DDP forward) covers
all three, as in the CryoET 1st-place solution."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from cellmapseg.classes import Ontology
from cellmapseg.config import ModelConfig
from cellmapseg.models.loss import PartialAnnotationLoss
from cellmapseg.models.mixup import mixup
from cellmapseg.models.registry import build_network, check_model, level_weights


def resize_nearest(t: torch.Tensor | None, size: torch.Size) -> torch.Tensor | None:
    """Nearest-neighbour resize: binary targets and masks must stay binary at coarser levels."""
    if t is None or t.shape[2:] == size:
        return t
    return F.interpolate(t, size=tuple(size), mode="nearest-exact")


class Net(nn.Module):
    def __init__(self, cfg: ModelConfig, ontology: Ontology, in_channels: int = 1) -> None:
        """One output channel per atomic class of `ontology`."""
        super().__init__()
        check_model(cfg)
        self.name = cfg.name
        self.network = build_network(cfg, in_channels, ontology.num_channels)
        levels = level_weights(cfg)
        self.level_weights = [w / sum(levels) for w in levels]
        self.loss = PartialAnnotationLoss(
            cfg.class_weight_list(ontology) if cfg.class_weights else None, cfg.dice_weight,
            cfg.ce_weight, overlap=cfg.loss, tversky_alpha=cfg.tversky_alpha,
            tversky_beta=cfg.tversky_beta)
        self.mixup_p = cfg.mixup_p
        self.mixup_beta = cfg.mixup_beta
        self.dtype = (torch.bfloat16 if cfg.bf16 else
                      torch.float16 if cfg.mixed_precision else None)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 (or fp16, `mixed_precision`) autocast on CUDA when configured; CPU always runs
        fp32."""
        return torch.autocast(device_type=device.type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None and device.type == "cuda")

    def _draw_mixup(self, device: torch.device) -> bool:
        return self.mixup_p > 0 and bool(torch.rand((), device=device) < self.mixup_p)

    def _level_loss(self, logits: list[torch.Tensor], target: torch.Tensor,
                    mask: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Weighted mean over the levels; each level sees the target resized to its shape."""
        total = logits[0].new_zeros((), dtype=torch.float32)
        for weight, out in zip(self.level_weights, logits, strict=True):
            size = out.shape[2:]
            total = total + weight * self.loss(
                out, resize_nearest(target, size), mask, resize_nearest(valid, size))
        return total

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training: {"loss"} (Mixup with probability mixup_p). Eval: {"logits"} at full
        resolution, plus {"loss"} there when the batch has a target."""
        x = batch["input"]
        target = batch.get("target")
        valid = batch.get("valid")
        with self.autocast(x.device):
            if self.training:
                if target is None:
                    raise ValueError("Net.forward in training mode needs batch['target']")
                mask = batch["annotation_mask"]
                if self._draw_mixup(x.device):
                    x, target, mask, valid = mixup(x, target, mask, valid, self.mixup_beta)
                return {"loss": self._level_loss(self.network(x), target, mask, valid)}
            logits = self.network(x)[0]
            out = {"logits": logits.float()}
            if target is not None:
                out["loss"] = self.loss(logits, target, batch["annotation_mask"], valid)
            return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution logits (float32), e.g. as the predictor of sliding-window inference."""
        with self.autocast(x.device):
            return self.network(x)[0].float()
