"""Linear warmup then cosine decay, stepped once per optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = int(round(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_fraction))
