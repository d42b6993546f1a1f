"""Block-wise sliding-window inference that equals a whole-volume run.

MONAI's `sliding_window_inference` places windows on a grid fixed by the image size: starts at
multiples of the scan interval, the last one moved back to end at the border. A block's core is
predicted by running MONAI's inferer on the smallest region that holds every global window
touching the core; that region starts and ends on the global grid, so MONAI places exactly the
same windows there and the Gaussian blend at every core voxel matches the whole-volume result.
Memory is bounded by the region (block + up to one window per side), never by the crop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from monai.data.utils import dense_patch_slices

from cellmapseg.blockwise import Span, spans
from cellmapseg.config import InferenceConfig
from cellmapseg.predict.tta import IDENTITY, Transform
from cellmapseg.predict.window import sliding_window_logits


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis, as MONAI's sliding_window_inference places them."""
    padded = max(size, roi)
    # MONAI's _get_scan_interval: one window when it spans the axis, else roi * (1 - overlap)
    interval = roi if roi == padded else max(int(roi * (1 - overlap)), 1)
    return [s[0].start for s in dense_patch_slices((padded,), (roi,), (interval,))]


def region(core: Span, size: int, roi: int, overlap: float) -> Span:
    """The span of all windows that touch `core` (the whole axis when it is shorter than roi)."""
    if size <= roi:
        return 0, size
    b0, b1 = core
    touching = [s for s in window_starts(size, roi, overlap) if s < b1 and s + roi > b0]
    return min(touching), max(touching) + roi


def predict_blocks(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    mean: float,
    std: float,
    roi: Sequence[int],
    cfg: InferenceConfig,
    block: Sequence[int],
    device: torch.device,
    transforms: Sequence[Transform] = IDENTITY,
    to_cpu: bool = True,
) -> Iterator[tuple[tuple[slice, ...], torch.Tensor]]:
    """Yield (core slices, logits (C, *core) float32, on the CPU unless not `to_cpu`) for every
    block of `image`.

    `image` may be a memory map: only one region is read at a time. It is normalised with the
    float32 statistics training uses (data.batch.prepare_batch), so that a block's input equals
    the training-time input bit for bit. With several `transforms` (predict.tta), logits are
    averaged over the transformed inputs (test-time augmentation)."""
    mean32, std32 = np.float32(mean), max(np.float32(std), np.float32(1e-6))
    for core in spans(image.shape, block):
        span = [region(c, n, r, cfg.overlap)
                for c, n, r in zip(core, image.shape, roi, strict=True)]
        x = np.asarray(image[tuple(slice(a, b) for a, b in span)], dtype=np.float32)
        x = torch.from_numpy((x - mean32) / std32)[None, None].to(device)
        logits = sum(_transformed(predict, x, roi, cfg, t) for t in transforms) / len(transforms)
        inner = tuple(slice(c0 - a, c1 - a) for (c0, c1), (a, _) in zip(core, span, strict=True))
        out = logits[0][(slice(None), *inner)]
        yield tuple(slice(*c) for c in core), out.cpu() if to_cpu else out


def _transformed(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 roi: Sequence[int], cfg: InferenceConfig, t: Transform) -> torch.Tensor:
    if t == Transform():
        return sliding_window_logits(predict, x, roi, cfg)
    return t.invert(sliding_window_logits(predict, t.apply(x), roi, cfg))
