"""Volumes in compact form and the interface every caching strategy implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from cellmapseg.data.padding import Padding


@dataclass(frozen=True)
class Volume:
    """One crop in compact form: what samplers and validation read."""

    name: str
    image: np.ndarray  # (D, H, W), smallest lossless dtype (uint8 for EM)
    label: np.ndarray  # (D, H, W) uint8 class values 0..14
    annotation_mask: np.ndarray  # (C,) float32, 1 = channel annotated in this crop
    mean: float  # whole-crop intensity statistics, for normalising patches on the device
    std: float
    padding: Padding | None = None  # black padding kept out of the loss and scores (or none)

    def padding_mask(self, box: tuple[slice, slice, slice]) -> np.ndarray | None:
        """True on the padding voxels of `box` (None: nothing masked)."""
        return None if self.padding is None else self.padding.mask(self.image[box], box)

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
