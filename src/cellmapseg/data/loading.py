"""Load crops from NIfTI into compact Volumes, using the inventory's per-crop facts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cellmapseg.data import volume_io
from cellmapseg.data.compact import to_compact_image, to_compact_label
from cellmapseg.data.datalist import CropEntry, parse_annotated_classes
from cellmapseg.data.volumes import Volume


def mask_from_string(text: str, where: str, channels: int) -> np.ndarray:
    mask = np.zeros(channels, np.float32)
    mask[list(parse_annotated_classes(text, where, channels))] = 1.0
    return mask


def row_channels(row: Mapping[str, Any]) -> int:
    """The number of atomic classes an inventory row was built for: its vox_{class} columns,
    one per class in channel order (data.inventory.columns)."""
    return sum(1 for key in row if str(key).startswith("vox_"))


def row_mask(row: Mapping[str, Any]) -> np.ndarray:
    """An inventory row's annotation mask, one entry per atomic class."""
    text = row["annotated_classes"]
    text = "" if not isinstance(text, str) else text  # pandas reads an empty cell as NaN
    return mask_from_string(text, f"crop {row['crop']}: annotated_classes", row_channels(row))


def load_volume(row: Mapping[str, Any]) -> Volume:
    """Read one crop named by an inventory row (image, label, compact dtype, mean, std)."""
    image = to_compact_image(volume_io.load_array(row["image"]),
                             np.dtype(row["compact_image_dtype"]))
    label = to_compact_label(volume_io.load_array(row["label"]))
    return Volume(
        name=str(row["crop"]),
        image=image,
        label=label,
        annotation_mask=row_mask(row),
        mean=float(row["image_mean"]),
        std=float(row["image_std"]),
    )


def volume_from_entry(entry: CropEntry, channels: int) -> Volume:
    """Read a crop straight from its datalist entry (statistics computed here)."""
    image = to_compact_image(volume_io.load_array(entry.image))
    label = to_compact_label(volume_io.load_array(entry.label))
    return Volume(
        name=entry.name, image=image, label=label,
        annotation_mask=entry.annotation_mask(channels),
        mean=float(image.mean(dtype=np.float64)), std=float(image.std(dtype=np.float64)),
    )
