"""Per-crop inventory: shape, dtype, compact-cache cost, intensity statistics, class voxel counts.

The one owner of results/data/inventory.csv: it writes it, reads it, lists its columns and
chooses crops from it ("the validation crops, or the named ones") for every later stage.
Built in the same read as the data checks (`checks.scan_crops`), so each crop's voxels are
read once. The CSV is written only when every crop is valid, and atomically.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellmapseg.atomic import atomic_path
from cellmapseg.classes import Ontology
from cellmapseg.config import Config
from cellmapseg.data.checks import CropHeaders, scan_crops
from cellmapseg.data.compact import compact_bytes
from cellmapseg.data.datalist import CropEntry, read_datalist
from cellmapseg.data.scan import ImageScan, LabelScan
from cellmapseg.errors import InputError

log = logging.getLogger(__name__)
CHUNK_VOXELS = 1 << 22  # chunk of `flat_chunks` (arrays already in memory)

COLUMNS: tuple[str, ...] = (
    "crop", "dataset", "crop_id", "split", "image", "label", "d", "h", "w", "voxels",
    "image_dtype", "image_uint8_lossless", "compact_image_dtype", "compact_bytes",
    "image_mean", "image_std", "zero_voxels", "padding_voxels", "padding",
    "annotated_classes", "n_annotated",
)  # then one vox_{class} column per atomic class (`columns`)
# padding: the crop's data.padding.BorderRuns folder (padding/{crop}/ beside the CSV), empty
# when no run of 0 reaches its border; padding_voxels: the voxels of those runs.
# What names a crop, its files, its shape and its annotations: the columns the stages after
# training (prediction, evaluation, the report) need, checked when they read the inventory.
CROP_COLUMNS: tuple[str, ...] = ("crop", "crop_id", "split", "image", "label", "d", "h", "w",
                                 "annotated_classes")


def columns(ontology: Ontology) -> list[str]:
    """The inventory's columns under `ontology`: voxels of each atomic class last."""
    return [*COLUMNS, *(f"vox_{name}" for name in ontology.atomic)]


def flat_chunks(array: np.ndarray, chunk: int | None = None) -> Iterator[np.ndarray]:
    """Consecutive 1D views of `array` in memory order (no copy for C- or F-ordered arrays)."""
    chunk = chunk or CHUNK_VOXELS
    flat = array.ravel(order="K")
    for start in range(0, flat.size, chunk):
        yield flat[start : start + chunk]


def _stats(scan: ImageScan) -> dict[str, Any]:
    return {"image_uint8_lossless": scan.uint8_lossless(), "image_mean": scan.mean,
            "image_std": scan.std}


def image_stats(image: np.ndarray) -> dict[str, Any]:
    """float64 mean/std over the whole array and uint8-losslessness, chunk by chunk (the same
    accumulation as the streamed inventory)."""
    scan = ImageScan()
    for chunk in flat_chunks(image):
        scan.add(chunk)
    return _stats(scan)


def label_counts(label: np.ndarray, labels: tuple[int, ...]) -> np.ndarray:
    """Voxels per label value 0..max(labels) (values already validated to be among them)."""
    scan = LabelScan(labels)
    for chunk in flat_chunks(label):
        scan.add(chunk)
    return scan.counts


def _padding(entry: CropEntry, image: ImageScan, folders: tuple[Path, Path] | None
             ) -> dict[str, Any]:
    """The padding columns; the runs saved in folders[0] (named as in folders[1], where
    write_inventory moves them) when the crop has border padding."""
    runs = image.runs
    voxels = runs.count() if runs is not None else 0
    if not voxels or folders is None:
        return {"zero_voxels": image.zeros, "padding_voxels": voxels, "padding": ""}
    name = entry.name
    runs.save(folders[0] / name)
    return {"zero_voxels": image.zeros, "padding_voxels": voxels,
            "padding": str(folders[1] / name)}


def crop_row(ontology: Ontology, entry: CropEntry, headers: CropHeaders, image: ImageScan,
             label: LabelScan, padding: tuple[Path, Path] | None = None) -> dict[str, Any]:
    """One inventory row from the scans of a crop that passed every check (scan_crops'
    `analyse`); `padding`: (where to save the crop's BorderRuns now, where they will be)."""
    compact = image.compact_dtype()
    counts = label.counts
    d, h, w = headers.image.shape3d
    return {
        "crop": entry.name,
        "dataset": entry.dataset,
        "crop_id": entry.crop_id,
        "split": entry.split,
        "image": str(entry.image),
        "label": str(entry.label),
        "d": d,
        "h": h,
        "w": w,
        "voxels": d * h * w,
        "image_dtype": headers.image.dtype.name,  # "float32" whatever the byte order
        **_stats(image),
        "compact_image_dtype": str(compact),
        "compact_bytes": compact_bytes((d, h, w), compact),
        **_padding(entry, image, padding),
        "annotated_classes": entry.annotated_text,
        "n_annotated": len(entry.annotated_classes),
        **{f"vox_{name}": int(counts[value])
           for name, value in zip(ontology.atomic, ontology.labels, strict=True)},
    }


def build_inventory(
    entries: Sequence[CropEntry],
    spacing_nm: Sequence[float],
    tolerance: float,
    ontology: Ontology,
    workers: int = 1,
    strict: bool = False,
    padding: tuple[Path, Path] | None = None,
) -> pd.DataFrame:
    """Validate every crop and return one inventory row per crop, in datalist order; `strict`
    (data.strict_annotations) makes label voxels of classes a crop does not annotate a problem;
    `padding` as in crop_row (None: the runs are counted, not kept).

    Raises InputError naming every problem if any crop is invalid.
    """
    warnings, rows = scan_crops(entries, spacing_nm, tolerance, ontology.labels,
                                analyse=partial(crop_row, ontology, padding=padding),
                                workers=workers, names=ontology.atomic, strict=strict)
    for warning in warnings:
        log.warning(warning)
    return pd.DataFrame(rows, columns=columns(ontology))


def write_inventory(cfg: Config, out_csv: str | Path, workers: int = 1) -> pd.DataFrame:
    """Read cfg's datalist, validate every crop, and write the inventory CSV atomically.

    Nothing is written when any input is invalid (InputError propagates).
    """
    entries = read_datalist(cfg.data.datalist, cfg.data.dataroot, cfg.classes.num_channels)
    folder = Path(out_csv).resolve().parent
    final, partial_dir = folder / "padding", folder / ".padding.partial"
    created = not folder.exists()
    shutil.rmtree(partial_dir, ignore_errors=True)
    try:
        table = build_inventory(entries, cfg.data.spacing_nm, cfg.data.spacing_tolerance,
                                cfg.classes, workers, strict=cfg.data.strict_annotations,
                                padding=(partial_dir, final))
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)  # nothing half-written is left
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    shutil.rmtree(final, ignore_errors=True)
    if partial_dir.is_dir():  # some crop has border padding
        partial_dir.rename(final)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    log.info("inventory: %d crops -> %s", len(table), out_csv)
    return table


def read_inventory(path: str | Path, columns: Iterable[str] = ()) -> pd.DataFrame:
    """The inventory CSV; `columns` that a reader needs must be present (one line names the
    first missing one)."""
    if not Path(path).is_file():
        raise InputError(f"inventory: {path} not found (run the inventory rule)")
    # keep_default_na: an empty annotated_classes must stay "" (not NaN)
    frame = pd.read_csv(path, keep_default_na=False, dtype={"annotated_classes": str})
    require_columns(frame, columns, str(path))
    return frame


def require_columns(frame: pd.DataFrame, columns: Iterable[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{where}: column {missing[0]!r} missing")


def select(inventory: pd.DataFrame, crops: Sequence[str] | None, stage: str) -> pd.DataFrame:
    """The validation crops when `crops` is None or empty, else the named ones (crop name or
    crop id), in inventory order. Raises InputError naming `stage` when a named crop is not in
    the inventory or nothing is selected."""
    names = inventory["crop"].astype(str)
    ids = inventory["crop_id"].astype(str)
    if not crops:
        chosen = inventory[inventory["split"] == "validation"]
        if chosen.empty:
            raise InputError(f"{stage}: no crops in the validation split of the inventory")
        return chosen
    known = set(names) | set(ids)
    missing = [c for c in crops if c not in known]
    if missing:
        raise InputError(f"{stage}: crops not in the inventory: {', '.join(missing)}")
    return inventory[names.isin(crops) | ids.isin(crops)]


def validation_crop_ids(path: str | Path) -> list[str]:
    """The crop ids of the validation split, in inventory order: the workflow's per-crop jobs."""
    frame = read_inventory(path, ("crop", "crop_id", "split"))
    return [str(c) for c in select(frame, None, "predict")["crop_id"]]
