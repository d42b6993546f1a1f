"""Volumes in compact form and the interface every caching strategy implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Volume:
    """One crop in compact form: what samplers and validation read."""

    name: str
    image: np.ndarray  # (D, H, W), smallest lossless dtype (uint8 for EM)
    label: np.ndarray  # (D, H, W) uint8 class values 0..14
    annotation_mask: np.ndarray  # (C,) float32, 1 = channel annotated in this crop
    mean: float  # whole-crop intensity statistics, for normalising patches on the device
    std: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]


class VolumeSource(Protocol):
    """Random access to compact volumes; each caching strategy provides one."""

    def __len__(self) -> int: ...

    def get(self, index: int) -> Volume: ...


class ListSource:
    """Volumes already held in this process (strategy A's in-RAM cache, and tests)."""

    def __init__(self, volumes: list[Volume]) -> None:
        self._volumes = list(volumes)

    def __len__(self) -> int:
        return len(self._volumes)

    def get(self, index: int) -> Volume:
        return self._volumes[index]
