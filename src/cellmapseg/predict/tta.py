"""Test-time augmentation: the transforms a prediction averages its logits over.

Flips of any set of axes (8 with the identity), and rotations by 90 and 270 degrees in each
plane whose two axes have the same voxel size (a rotation in an anisotropic plane would show
the network a voxel shape it never saw; 180 degrees is a double flip, already there). On
isotropic data that is 8 + 6 = 14 passes. Each pass runs the sliding window on the transformed
block region and maps its logits back; the passes are averaged before the sigmoid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

AXES = (0, 1, 2)


@dataclass(frozen=True)
class Transform:
    flips: tuple[int, ...] = ()  # spatial axes mirrored
    turns: int = 0  # quarter turns in `plane` (rot90's k)
    plane: tuple[int, int] = (1, 2)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) -> the transformed tensor: flips, then the rotation."""
        if self.flips:
            x = x.flip([a + 2 for a in self.flips])
        if self.turns:
            x = torch.rot90(x, self.turns, [a + 2 for a in self.plane])
        return x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """The network's output on `apply(x)` mapped back onto x's voxels."""
        if self.turns:
            y = torch.rot90(y, -self.turns, [a + 2 for a in self.plane])
        if self.flips:
            y = y.flip([a + 2 for a in self.flips])
        return y

    @property
    def name(self) -> str:
        parts = [f"flip{''.join('zyx'[a] for a in self.flips)}"] if self.flips else []
        if self.turns:
            parts.append(f"rot{90 * self.turns}{''.join('zyx'[a] for a in self.plane)}")
        return "+".join(parts) or "identity"


IDENTITY = (Transform(),)
# inference.tta_flips: the identity and each axis flipped alone
SINGLE_FLIPS = (Transform(), *(Transform((a,)) for a in AXES))


def rotation_planes(spacing: Sequence[float]) -> tuple[tuple[int, int], ...]:
    """The planes (axis pairs) whose two voxel sizes are equal."""
    return tuple((a, b) for a, b in itertools.combinations(AXES, 2)
                 if math.isclose(spacing[a], spacing[b], rel_tol=1e-6))


def transforms(flips: bool, rot90: bool, spacing: Sequence[float]) -> tuple[Transform, ...]:
    """The identity, then every flip set (with `flips`), then the quarter and three-quarter
    turns in each plane of equal voxel size (with `rot90`)."""
    out = list(IDENTITY)
    if flips:
        out += [Transform(tuple(s)) for n in (1, 2, 3) for s in itertools.combinations(AXES, n)]
    if rot90:
        out += [Transform((), k, plane) for plane in rotation_planes(spacing) for k in (1, 3)]
    return tuple(out)
