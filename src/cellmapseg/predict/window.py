"""The one sliding-window inferer: validation during training and the predict stage use it.

MONAI's `sliding_window_inference` runs the window loop with Gaussian blending; it pads volumes
smaller than the window itself and crops the result back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import sliding_window_inference

from cellmapseg.config import InferenceConfig


def sliding_window_logits(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    roi: Sequence[int],
    cfg: InferenceConfig,
) -> torch.Tensor:
    """Gaussian-blended logits (N, C, D, H, W) in float32 for a normalised image (N, 1, D, H, W)."""
    out = sliding_window_inference(
        image, roi_size=list(roi), sw_batch_size=cfg.sw_batch_size,
        predictor=lambda x: predict(x).float(), overlap=cfg.overlap, mode="gaussian",
        sigma_scale=cfg.sigma_scale, progress=False,
    )
    return out.as_tensor() if hasattr(out, "as_tensor") else out


def binarise(logits: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """sigmoid(logit) > threshold per class -> bool (N, C, ...), computed as logit > logit(t)
    (sigmoid is monotonic), which spares a float copy of the whole output."""
    t = torch.logit(torch.as_tensor(thresholds, dtype=torch.float64)).to(logits)
    return logits > t.view(1, -1, *([1] * (logits.ndim - 2)))
