"""Compact in-memory representation of crops: smallest lossless image dtype, uint8 labels.

The spec's CacheDataset held a normalised float32 image plus a 14-channel float32 one-hot label
(60 bytes per voxel). Here a cached voxel costs 2 bytes for typical EM data (uint8 image, uint8
label); normalisation and one-hot happen later, on the patch, on the training device.
"""

from __future__ import annotations

import numpy as np

# Label value that marks padding (voxels outside the real crop). It is not a class value, so a
# padded voxel is a negative for no channel and is excluded from the loss by the validity mask.
PAD_LABEL = 255


def compact_image_dtype(image: np.ndarray) -> np.dtype:
    """Smallest dtype that holds `image` without loss (uint8 for integer-valued EM in [0, 255])."""
    if image.dtype in (np.uint8, np.uint16):
        return image.dtype
    if np.issubdtype(image.dtype, np.integer):
        lo, hi = (int(image.min()), int(image.max())) if image.size else (0, 0)
    else:
        if not np.all(np.isfinite(image)):
            return np.dtype(np.float32)
        lo, hi = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
        if not _is_integer_valued(image):
            return np.dtype(np.float32)
    if lo >= 0 and hi <= 255:
        return np.dtype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return np.dtype(np.uint16)
    if lo >= -32768 and hi <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.float32)


def _is_integer_valued(image: np.ndarray, chunk: int = 1 << 24) -> bool:
    flat = image.reshape(-1)
    # Chunked so that a multi-GB crop does not need a second full-size temporary.
    return all(
        np.array_equal(flat[i : i + chunk], np.round(flat[i : i + chunk]))
        for i in range(0, flat.size, chunk)
    )


def to_compact_image(image: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    dtype = compact_image_dtype(image) if dtype is None else np.dtype(dtype)
    return np.ascontiguousarray(image.astype(dtype, copy=False))


def to_compact_label(label: np.ndarray) -> np.ndarray:
    """Labels are stored as uint8 class values 0..14 (never one-hot)."""
    return np.ascontiguousarray(label.astype(np.uint8, copy=False))


def compact_bytes(shape: tuple[int, ...], image_dtype: np.dtype) -> int:
    """Bytes one crop costs in the compact cache (image + uint8 label)."""
    voxels = int(np.prod(shape))
    return voxels * (np.dtype(image_dtype).itemsize + 1)
