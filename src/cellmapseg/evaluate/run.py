"""Score one model's predictions.zarr against the validation crops: eval.csv + eval_summary.json.

Every input is checked (store, crop groups, class arrays, shapes, dtypes, voxel sizes, label
files) before any voxel is scored, and both outputs are written atomically at the end, so a bad
input raises one InputError line and leaves nothing behind. Each crop is scored only on its
annotated classes (the challenge scores exactly the classes present in a crop's truth group,
submission.py `get_evaluation_args`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from cellmapseg.atomic import atomic_path, write_json
from cellmapseg.classes import CLASS_NAMES, INSTANCE_CLASSES
from cellmapseg.data.datalist import parse_annotated_classes
from cellmapseg.data.nifti import load_array, read_header
from cellmapseg.errors import InputError
from cellmapseg.evaluate.aggregate import summarise
from cellmapseg.evaluate.instance import score_instances
from cellmapseg.evaluate.semantic import dice, iou, semantic_counts
from cellmapseg.probe.memory import read_inventory

log = logging.getLogger(__name__)

INVENTORY_COLUMNS = ("crop", "crop_id", "split", "label", "d", "h", "w", "annotated_classes")
CSV_COLUMNS = (
    "crop", "crop_id", "class", "kind", "tp", "fp", "fn", "iou", "dice", "f1",
    "mean_norm_hausdorff", "combined", "n_pred", "n_true", "guard",
    "hausdorff_norm_sum", "n_hausdorff",  # raw pooling inputs, so eval.csv can be re-aggregated
)
STORE_NAME = "predictions.zarr"


@dataclass(frozen=True)
class CropJob:
    crop: str
    crop_id: str
    label: Path
    shape: tuple[int, int, int]
    classes: tuple[int, ...]  # annotated channels, ascending


def _load_inventory(inventory: Path | pd.DataFrame) -> pd.DataFrame:
    if isinstance(inventory, pd.DataFrame):
        inv, name = inventory.copy(), "inventory"
    else:
        name = str(inventory)
        if not Path(inventory).is_file():
            raise InputError(f"{name}: inventory file not found")
        inv = read_inventory(inventory)
    missing = [c for c in INVENTORY_COLUMNS if c not in inv.columns]
    if missing:
        raise InputError(f"{name}: missing columns {missing}")
    return inv


def _classes(text: Any, crop: str) -> tuple[int, ...]:
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    try:
        return tuple(sorted(parse_annotated_classes(text, f"crop {crop} annotated_classes")))
    except InputError as exc:
        raise InputError(str(exc).splitlines()[0]) from exc


def _job(row: pd.Series) -> CropJob:
    shape = (int(row["d"]), int(row["h"]), int(row["w"]))
    return CropJob(str(row["crop"]), str(row["crop_id"]), Path(str(row["label"])), shape,
                   _classes(row["annotated_classes"], str(row["crop"])))


def select_crops(inv: pd.DataFrame, crops: Sequence[str] | None) -> list[CropJob]:
    """The validation crops (default) or the named ones (by `crop` or `crop_id`), in order."""
    if crops is None:
        chosen = inv[inv["split"] == "validation"]
        if chosen.empty:
            raise InputError("inventory: no crops in the validation split")
    else:
        known = set(inv["crop"].astype(str)) | set(inv["crop_id"].astype(str))
        unknown = [c for c in crops if c not in known]
        if unknown:
            raise InputError(f"inventory: unknown crop {unknown[0]!r}")
        names = set(crops)
        chosen = inv[inv["crop"].astype(str).isin(names) | inv["crop_id"].astype(str).isin(names)]
    return [_job(row) for _, row in chosen.iterrows()]


def store_path(predictions: Path) -> Path:
    """`predictions` is the store itself (*.zarr) or the folder holding predictions.zarr."""
    predictions = Path(predictions)
    return predictions if predictions.suffix == ".zarr" else predictions / STORE_NAME


def open_store(path: Path) -> zarr.Group:
    if not path.is_dir():
        raise InputError(f"{path}: prediction store not found")
    try:
        return zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a readable Zarr group ({exc})") from exc


def _check_array(where: str, group: zarr.Group, name: str, shape: tuple[int, ...],
                 voxel: tuple[float, ...]) -> None:
    if name not in group or not isinstance(group[name], zarr.Array):
        raise InputError(f"{where}/{name}: class array missing")
    arr = group[name]
    if tuple(arr.shape) != shape:
        raise InputError(
            f"{where}/{name}: prediction shape {tuple(arr.shape)} != crop shape {shape}")
    if arr.dtype.kind not in "biu":
        raise InputError(f"{where}/{name}: dtype {arr.dtype} is not an integer or bool label")
    attr = arr.attrs.get("voxel_size")
    if attr is None:
        raise InputError(f"{where}/{name}: attribute voxel_size missing")
    got = tuple(float(v) for v in attr)
    if len(got) != len(voxel) or not np.allclose(got, voxel, rtol=1e-6, atol=0.0):
        raise InputError(f"{where}/{name}: voxel_size {list(got)} != configured spacing "
                         f"{list(voxel)} nm")


def check_crop(store: zarr.Group, path: Path, job: CropJob, voxel: tuple[float, ...]) -> None:
    """Raise InputError (one line naming crop/class/file) on the first problem with a crop."""
    header = read_header(job.label)
    if header.shape3d != job.shape:
        raise InputError(f"{job.label}: label shape {header.shape} != inventory shape {job.shape} "
                         f"(crop {job.crop})")
    where = f"{path}/{job.crop_id}"
    if job.crop_id not in store or not isinstance(store[job.crop_id], zarr.Group):
        raise InputError(f"{where}: crop group missing (crop {job.crop})")
    group = store[job.crop_id]
    for c in job.classes:
        _check_array(where, group, CLASS_NAMES[c], job.shape, voxel)


def _semantic_row(arr: zarr.Array, truth: np.ndarray, c: int, block: int) -> dict[str, Any]:
    n = semantic_counts(arr, truth, c + 1, block)
    return {"kind": "semantic", "tp": n.tp, "fp": n.fp, "fn": n.fn,
            "iou": iou(n.tp, n.fp, n.fn), "dice": dice(n.tp, n.fp, n.fn),
            "n_pred": n.tp + n.fp, "n_true": n.tp + n.fn, "guard": ""}


def _instance_row(arr: zarr.Array, truth: np.ndarray, c: int,
                  voxel: tuple[float, ...]) -> dict[str, Any]:
    s = score_instances(np.asarray(arr[...]), truth == c + 1, voxel)
    f1, mean, combined = s.metrics()
    return {"kind": "instance", "tp": s.tp, "fp": s.fp, "fn": s.fn, "f1": f1,
            "mean_norm_hausdorff": mean, "combined": combined, "n_pred": s.n_pred,
            "n_true": s.n_true, "guard": s.guard, "hausdorff_norm_sum": s.norm_sum,
            "n_hausdorff": s.n_dist}


def score_crop(store: zarr.Group, job: CropJob, voxel: tuple[float, ...],
               block: int) -> list[dict[str, Any]]:
    """One row per annotated class of a crop (inputs already checked)."""
    truth = load_array(job.label).reshape(job.shape)  # drops a trailing singleton 4th axis
    group = store[job.crop_id]
    rows = []
    for c in job.classes:
        name = CLASS_NAMES[c]
        arr = group[name]
        row = (_instance_row(arr, truth, c, voxel) if name in INSTANCE_CLASSES
               else _semantic_row(arr, truth, c, block))
        rows.append({"crop": job.crop, "crop_id": job.crop_id, "class": name, **row})
    log.info("scored %s (%d classes)", job.crop, len(rows))
    return rows


def evaluate(predictions: Path, inventory: Path | pd.DataFrame, spacing_nm: Sequence[float],
             out_csv: Path, out_summary: Path, crops: list[str] | None = None,
             block: int = 128) -> dict:
    """Score the validation crops (or `crops`); write eval.csv and eval_summary.json; return
    the summary. Raises InputError, writing nothing, when any input is wrong."""
    voxel = tuple(float(v) for v in spacing_nm)
    if len(voxel) != 3 or min(voxel) <= 0:
        raise InputError(f"spacing_nm: expected 3 positive values, got {list(spacing_nm)}")
    jobs = select_crops(_load_inventory(inventory), crops)
    path = store_path(predictions)
    store = open_store(path)
    for job in jobs:
        check_crop(store, path, job, voxel)
    rows = [row for job in jobs for row in score_crop(store, job, voxel, block)]
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    table["n_hausdorff"] = table["n_hausdorff"].astype("Int64")  # empty for semantic rows
    summary = summarise(table, [job.crop for job in jobs])
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    write_json(out_summary, _json_safe(summary))
    return summary


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, so the JSON stays standard."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
