"""Mixup for partially annotated multi-label batches (CryoET 1st-place style, per sample).

A mixed sample's channel is known only where BOTH sources annotate it: with the union (the
spec's torch.max) a channel annotated in one source only would train the other source's unknown
voxels as negatives. The same holds for padded voxels, so `valid` is intersected too.
"""

from __future__ import annotations

import torch


def sample_beta(n: int, beta: float, device: torch.device,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) draws of Beta(beta, beta). torch.distributions.Beta takes no generator; it samples
    through the same Dirichlet kernel, which does."""
    concentration = torch.full((n, 2), float(beta), device=device)
    return torch._sample_dirichlet(concentration, generator=generator)[:, 0]


def mixup(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None,
    beta: float, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Mix each sample with a random partner of the batch: lambda ~ Beta(beta, beta) per sample.

    x (N, 1, ...) and y (N, C, ...) are mixed linearly; mask (N, C) and valid (N, 1, ...) are
    intersected. Returns (x, y, mask, valid)."""
    n = x.shape[0]
    lam = sample_beta(n, beta, x.device, generator)
    perm = torch.randperm(n, device=x.device, generator=generator)
    lam_x = lam.to(x.dtype).view(-1, *[1] * (x.ndim - 1))
    lam_y = lam.to(y.dtype).view(-1, *[1] * (y.ndim - 1))
    x = lam_x * x + (1 - lam_x) * x[perm]
    y = lam_y * y + (1 - lam_y) * y[perm]
    mask = torch.minimum(mask, mask[perm])
    if valid is not None:
        valid = torch.minimum(valid, valid[perm])
    return x, y, mask, valid
