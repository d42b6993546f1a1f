"""EM-like intensities for a synthetic label: per-class means and texture, chromatin, the PSF
blur and each dataset's contrast and noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cellmapseg.config import SyntheticConfig
from cellmapseg.synthetic.geometry import NUC, smooth_noise
from cellmapseg.synthetic.plan import TAG_LOOK, stream

# EM appearance per label value (index 0 = cytosol) before the PSF blur, which lightens thin
# membranes by ~40: membranes dark, lumens distinguishable but overlapping with another class.
_BASE = np.array(
    [150, 205, 32, 38, 112, 30, 40, 176, 35, 186, 40, 138, 45, 172, 128], dtype=np.float32)
_TEXTURE = np.array(  # texture amplitude per label value
    [8, 6, 3, 3, 10, 3, 3, 5, 3, 5, 3, 16, 3, 5, 8], dtype=np.float32)
_ENVELOPE = 50.0  # nuclear envelope (inside the nuc label)
_CHROMATIN_DROP = 45.0  # heterochromatin is darker than nucleoplasm
_PSF_SIGMA = 0.7


@dataclass(frozen=True)
class Appearance:
    """Per-dataset imaging conditions (staining/detector differences)."""

    gain: float
    offset: float
    noise_sd: float


def appearances(cfg: SyntheticConfig) -> list[Appearance]:
    """Per-dataset gain/offset drawn from separate strata, so datasets always differ visibly."""
    rng = stream(cfg, TAG_LOOK)
    n = cfg.n_datasets
    offset_slot = rng.permutation(n) + rng.uniform(0.3, 0.7, n)
    gain_slot = rng.permutation(n) + rng.uniform(0.3, 0.7, n)
    noise = rng.uniform(4.0, 9.0, n)
    return [
        Appearance(gain=float(0.8 + 0.4 * g / n), offset=float(-30 + 60 * o / n),
                   noise_sd=float(s))
        for g, o, s in zip(gain_slot, offset_slot, noise, strict=True)
    ]


# ------------------------------------------------------------------------------------ image


def _tables(top: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and texture per internal value 0..top: the 14 kinds' own, then a spread of
    intensities for the extra classes (geometry.extras) so that each looks distinct."""
    extra = np.arange(max(top + 1 - _BASE.size, 0))
    base = np.concatenate([_BASE, (60 + (extra * 47) % 140).astype(np.float32)])
    texture = np.concatenate([_TEXTURE, np.full(extra.size, 4.0, np.float32)])
    return base, texture


def render(rng: np.random.Generator, label: np.ndarray, look: Appearance) -> np.ndarray:
    """EM-like intensities: class means + texture, chromatin, PSF blur, dataset contrast, noise.
    `label` holds the painter's internal values (geometry)."""
    shape = label.shape
    texture = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.2)
    texture /= texture.std() + 1e-6
    base, amplitude = _tables(int(label.max()) if label.size else 0)
    image = base[label] + amplitude[label] * texture
    nucleus = label == NUC
    if nucleus.any():
        periphery = nucleus & ~ndi.binary_erosion(nucleus, iterations=3, border_value=1)
        chromatin = nucleus & (smooth_noise(rng, shape, 5.0) > 0.4 - 1.2 * periphery)
        image[chromatin] -= _CHROMATIN_DROP
        # a double membrane: 2 voxels, so that it survives the PSF blur as a dark line
        envelope = nucleus & ~ndi.binary_erosion(nucleus, iterations=2, border_value=1)
        image[envelope] = _ENVELOPE
    image = ndi.gaussian_filter(image, _PSF_SIGMA)
    image = look.gain * (image - 128.0) + 128.0 + look.offset
    image += look.noise_sd * rng.standard_normal(shape).astype(np.float32)
    return np.rint(np.clip(image, 0, 252)).astype(np.float32)

