"""Score one model's predictions.zarr against the validation crops: eval.csv + eval_summary.json.

Every input is checked (store, crop groups, class arrays, shapes, dtypes, voxel sizes, label
files) before any voxel is scored, and both outputs are written atomically at the end, so a bad
input raises one InputError line and leaves nothing behind. Each crop is scored only on its
annotated classes (the challenge scores exactly the classes present in a crop's truth group,
submission.py `get_evaluation_args`): its annotated atomic classes, and each group all of whose
members it annotates (a union is known only where every member is; classes.Ontology.annotated).
A group's truth is the union of its members' label values.

With a `truth.ZarrTruth`, each class is scored instead at the ground truth's own resolution, as
the server does: against the crop's Zarr ground truth on the train manifest's grid of that
class, the prediction brought there by the official rules (data.resample.match_crop_space) and
the class's `{label}_mask` honoured (see evaluate.truth). The counting is the same.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from cellmapseg.atomic import atomic_path, write_json
from cellmapseg.blockwise import ScratchArray, ValueMask, slices, spans
from cellmapseg.classes import Ontology
from cellmapseg.data import inventory as inventory_mod
from cellmapseg.data import predictions
from cellmapseg.data.datalist import parse_annotated_classes
from cellmapseg.data.padding import Padding, crop_padding
from cellmapseg.data.resample import match_crop_space
from cellmapseg.data.volume_io import read_header, stream_to_npy
from cellmapseg.errors import InputError
from cellmapseg.evaluate import truth as zarr_truth
from cellmapseg.evaluate.aggregate import summarise
from cellmapseg.evaluate.instance import score_instances
from cellmapseg.evaluate.metrics import dice, iou
from cellmapseg.evaluate.semantic import semantic_counts
from cellmapseg.evaluate.truth import ClassTruth, Masked, Prediction, TruthMask, ZarrTruth

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "crop", "crop_id", "class", "kind", "tp", "fp", "fn", "iou", "dice", "f1",
    "mean_norm_hausdorff", "combined", "n_pred", "n_true", "guard",
    "hausdorff_norm_sum", "n_hausdorff",  # raw pooling inputs, so eval.csv can be re-aggregated
)


@dataclass(frozen=True)
class CropJob:
    crop: str
    crop_id: str
    label: Path
    shape: tuple[int, int, int]
    classes: tuple[int, ...]  # annotated channels, ascending
    channels: int  # atomic classes of the ontology
    image: Path | None = None
    padding: Padding | None = None  # black EM padding left out of the counts (data.padding)


class PaddingView:
    """1 on the black padding of a crop's image grid, 0 elsewhere, a region at a time (the
    `zeros` rule reads the image's scratch copy)."""

    def __init__(self, padding: Padding, shape: tuple[int, ...], image: Any = None) -> None:
        self.padding, self.image = padding, image
        self.shape, self.dtype = tuple(shape), np.dtype(np.uint8)

    def __getitem__(self, key: Any) -> np.ndarray:
        region = self.image[key] if self.image is not None else None
        found = self.padding.mask(region, key)
        shape = tuple(len(range(*s.indices(n))) for s, n in zip(key, self.shape, strict=True))
        return np.zeros(shape, np.uint8) if found is None else found.astype(np.uint8)


class Kept:
    """`mask` (1 = scored; None: everything) with the padding's voxels removed: the mask a
    class is scored under."""

    def __init__(self, mask: Any, padding: Any) -> None:
        self.mask, self.padding, self.shape = mask, padding, tuple(padding.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        keep = np.asarray(self.padding[key]) == 0
        if self.mask is not None:
            keep &= np.asarray(self.mask[key]) != 0
        return keep.astype(np.uint8)


def _padding_view(job: CropJob, scratch: Path) -> PaddingView | None:
    if job.padding is None:
        return None
    image = None
    if job.padding.mode == "zeros":
        if job.image is None:
            raise InputError(f"crop {job.crop}: padding_mask zeros needs the crop's image")
        header = read_header(job.image)
        image = stream_to_npy(job.image, np.dtype(header.dtype), scratch / "image.npy")
    return PaddingView(job.padding, job.shape, image)


def _load_inventory(inventory: Path | pd.DataFrame) -> pd.DataFrame:
    if isinstance(inventory, pd.DataFrame):
        inventory_mod.require_columns(inventory, inventory_mod.CROP_COLUMNS, "inventory")
        return inventory.copy()
    return inventory_mod.read_inventory(inventory, inventory_mod.CROP_COLUMNS)


def _classes(text: Any, crop: str, channels: int) -> tuple[int, ...]:
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    try:
        return tuple(sorted(parse_annotated_classes(text, f"crop {crop} annotated_classes",
                                                    channels)))
    except InputError as exc:
        raise InputError(str(exc).splitlines()[0]) from exc


def _job(row: pd.Series, ontology: Ontology, padding: str = "none") -> CropJob:
    shape = (int(row["d"]), int(row["h"]), int(row["w"]))
    n = ontology.num_channels
    return CropJob(str(row["crop"]), str(row["crop_id"]), Path(str(row["label"])), shape,
                   _classes(row["annotated_classes"], str(row["crop"]), n), n,
                   Path(str(row["image"])), crop_padding(padding, row.get("padding", "")))


def check_crop(store: zarr.Group, path: Path, job: CropJob, voxel: tuple[float, ...],
               ontology: Ontology) -> None:
    """Raise InputError (one line naming crop/class/file) on the first problem with a crop."""
    header = read_header(job.label)
    if header.shape3d != job.shape:
        raise InputError(f"{job.label}: label shape {header.shape} != inventory shape {job.shape} "
                         f"(crop {job.crop})")
    predictions.crop_arrays(store, path, job.crop_id, job.crop, job.shape,
                            ontology.annotated(job.classes), voxel)


def _semantic_row(arr: Any, truth: Any, values: tuple[int, ...], block: int
                  ) -> dict[str, Any]:
    n = semantic_counts(arr, truth, values, block)
    return {"kind": "semantic", "tp": n.tp, "fp": n.fp, "fn": n.fn,
            "iou": iou(n.tp, n.fp, n.fn), "dice": dice(n.tp, n.fp, n.fn),
            "n_pred": n.tp + n.fp, "n_true": n.tp + n.fn, "guard": ""}


def _instance_row(arr: zarr.Array, truth: ScratchArray, values: tuple[int, ...],
                  voxel: tuple[float, ...], block: int, scratch: Path) -> dict[str, Any]:
    s = score_instances(arr, ValueMask(truth, values), voxel, block=block, scratch=scratch)
    return _instance_fields(s)


def _instance_fields(s: Any) -> dict[str, Any]:
    f1, mean, combined = s.metrics()
    return {"kind": "instance", "tp": s.tp, "fp": s.fp, "fn": s.fn, "f1": f1,
            "mean_norm_hausdorff": mean, "combined": combined, "n_pred": s.n_pred,
            "n_true": s.n_true, "guard": s.guard, "hausdorff_norm_sum": s.norm_sum,
            "n_hausdorff": s.n_dist}


def score_crop(store: zarr.Group, job: CropJob, voxel: tuple[float, ...], block: int,
               scratch: Path, ontology: Ontology) -> list[dict[str, Any]]:
    """One row per annotated class of a crop (inputs already checked). The label is
    decompressed once into a scratch copy in `scratch` and read block by block from there."""
    group = store[job.crop_id]
    rows = []
    with tempfile.TemporaryDirectory(prefix=".scoring-", dir=scratch) as tmp:
        truth: Any = stream_to_npy(job.label, ontology.label_dtype, Path(tmp) / "label.npy")
        padding = _padding_view(job, Path(tmp))
        for name in ontology.annotated(job.classes):
            arr, values = group[name], ontology.label_values(name)
            seen = truth
            if padding is not None:  # a padded voxel is background on both sides
                keep = Kept(None, padding)
                arr, seen = Masked(arr, keep, arr.chunks), Masked(truth, keep, arr.chunks)
            row = (_instance_row(arr, seen, values, voxel, block, Path(tmp))
                   if ontology.is_instance(name) else _semantic_row(arr, seen, values, block))
            rows.append({"crop": job.crop, "crop_id": job.crop_id, "class": name, **row})
    log.info("scored %s (%d classes)", job.crop, len(rows))
    return rows


# ------------------------------------------------------- at the ground truth's resolution
@dataclass(frozen=True)
class TruthJob:
    """A crop to score against its Zarr ground truth: per class, the truth and the prediction."""

    job: CropJob
    classes: tuple[tuple[ClassTruth, Prediction], ...]  # annotated classes, `names` order
    placement: str  # how predictions are placed on the truth's grid (data.resample)


def _datasets(chosen: pd.DataFrame) -> list[str]:
    if "dataset" not in chosen.columns:
        raise InputError("inventory: column 'dataset' missing (scoring against the Zarr "
                         "ground truth needs each crop's dataset)")
    out = []
    for _, row in chosen.iterrows():
        value = row["dataset"]
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"inventory: crop {row['crop']} has no dataset")
        out.append(value.strip())
    return out


def check_crop_at_truth(store: zarr.Group, path: Path, job: CropJob, dataset: str,
                        voxel: tuple[float, ...], ontology: Ontology,
                        truth: ZarrTruth) -> TruthJob:
    """Every class's truth and prediction of one crop, checked from metadata (no voxel read);
    InputError (one line naming crop/class/file) on the first problem."""
    names = ontology.annotated(job.classes)
    arrays = predictions.crop_arrays(store, path, job.crop_id, job.crop, job.shape, names, voxel)
    plan = zarr_truth.plan_crop(truth, dataset, job.crop_id, names, ontology)
    pairs = []
    for name in names:
        where = f"{path}/{job.crop_id}/{name}"
        pred = zarr_truth.prediction(arrays[name], plan[name], f"{where} (crop {job.crop})")
        if not zarr_truth.covers(pred, plan[name].grid):
            log.warning("%s: the prediction does not cover the ground truth's box of class %s; "
                        "the rest is scored as background", where, name)
        pairs.append((plan[name], pred))
    return TruthJob(job, tuple(pairs), truth.placement)


def score_class_at_truth(cls: ClassTruth, pred: Prediction, instance: bool, block: int,
                         scratch: Path, placement: str = "official",
                         padding: Any = None) -> dict[str, Any]:
    """One class's row: the prediction brought to the truth's grid (official rules, with
    `placement`), both masked, counted as on the NIfTI route; distances in the truth's voxel
    size. `padding` (1 on black EM padding, on the prediction's grid) is brought there by the
    instance rule (nearest neighbour) and left out like the class's mask (outside the
    prediction's box it is 0: the server scores that region as predicted background)."""
    g = cls.grid
    aligned = match_crop_space(pred.array, pred.voxel_size, pred.translation, instance, g,
                               scratch / "aligned", pred.where, placement)
    if padding is not None:
        on_truth = match_crop_space(padding, pred.voxel_size, pred.translation, True, g,
                                    scratch / "padding", pred.where, placement)
        cls = dataclasses.replace(cls, mask=Kept(cls.mask, on_truth))
    view = Masked(aligned, cls.mask, cls.chunks)
    if not instance:
        return _semantic_row(view, TruthMask(cls), (1,), block)
    if cls.ids:
        ids, n_true = zarr_truth.truth_ids(cls, scratch / "truth.npy", block)
        s = zarr_truth.score_truth_ids(view, ids, n_true, g.voxel_size, block, scratch)
    else:
        s = score_instances(view, TruthMask(cls), g.voxel_size, block=block, scratch=scratch)
    return _instance_fields(s)


def _padding_copy(job: CropJob, scratch: Path, block: int) -> ScratchArray | None:
    """The crop's padding on its image grid as a scratch array (what match_crop_space reads),
    written a block at a time; None when nothing is padded."""
    view = _padding_view(job, scratch)
    if view is None:
        return None
    out = ScratchArray(scratch / "padding.npy", view.shape, np.uint8)
    for core in spans(view.shape, (block,) * 3):
        out[slices(core)] = view[slices(core)]
    return out


def score_crop_at_truth(plan: TruthJob, block: int, scratch: Path, ontology: Ontology
                        ) -> list[dict[str, Any]]:
    job, rows = plan.job, []
    with tempfile.TemporaryDirectory(prefix=".scoring-", dir=scratch) as tmp:
        padding = _padding_copy(job, Path(tmp), block)
        for cls, pred in plan.classes:
            work = Path(tmp) / cls.name
            work.mkdir()
            row = score_class_at_truth(cls, pred, ontology.is_instance(cls.name), block, work,
                                       plan.placement, padding)
            shutil.rmtree(work, ignore_errors=True)  # the aligned copy can be large
            rows.append({"crop": job.crop, "crop_id": job.crop_id, "class": cls.name, **row})
    log.info("scored %s at the ground truth's resolution (%d classes)", job.crop, len(rows))
    return rows


def score_table(predictions_path: Path, inventory: Path | pd.DataFrame,
                spacing_nm: Sequence[float], scratch: Path, ontology: Ontology,
                crops: Sequence[str] | None = None,
                block: int = 128, truth: ZarrTruth | None = None, padding: str = "none"
                ) -> tuple[pd.DataFrame, list[str]]:
    """eval.csv's rows for the validation crops (or `crops`) and the names of the crops scored;
    scratch copies go to `scratch`. Raises InputError, before scoring any voxel, when any
    input is wrong. With `truth`, each class is scored against its Zarr ground truth at the
    truth's own grid (module docstring); None: against the label NIfTI on the prediction's."""
    voxel = tuple(float(v) for v in spacing_nm)
    if len(voxel) != 3 or min(voxel) <= 0:
        raise InputError(f"spacing_nm: expected 3 positive values, got {list(spacing_nm)}")
    chosen = inventory_mod.select(_load_inventory(inventory), crops, "evaluate")
    jobs = [_job(row, ontology, padding) for _, row in chosen.iterrows()]
    datasets = _datasets(chosen) if truth is not None else []
    path = predictions.locate(predictions_path)
    store = predictions.open_store(path)
    if truth is not None:
        plans = [check_crop_at_truth(store, path, job, dataset, voxel, ontology, truth)
                 for job, dataset in zip(jobs, datasets, strict=True)]
        scratch.mkdir(parents=True, exist_ok=True)
        rows = [row for plan in plans for row in score_crop_at_truth(plan, block, scratch,
                                                                      ontology)]
        return _table(rows), [job.crop for job in jobs]
    for job in jobs:
        check_crop(store, path, job, voxel, ontology)
    scratch.mkdir(parents=True, exist_ok=True)
    rows = [row for job in jobs
            for row in score_crop(store, job, voxel, block, scratch, ontology)]
    return _table(rows), [job.crop for job in jobs]


def _table(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    table["n_hausdorff"] = table["n_hausdorff"].astype("Int64")  # empty for semantic rows
    return table


def write_table(table: pd.DataFrame, out_csv: Path) -> None:
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)


def read_table(path: Path, leading: Sequence[str] = ()) -> pd.DataFrame:
    """Rows written by write_table, with the types scoring gave them; `leading`: numeric
    columns written before eval.csv's (a threshold sweep's `threshold`)."""
    text = {c: str for c in ("crop", "crop_id", "class", "kind", "guard")}
    try:
        table = pd.read_csv(path, dtype=text, keep_default_na=False,
                            na_values={c: [""] for c in CSV_COLUMNS if c not in text})
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise InputError(f"{path}: not a readable score table ({exc})") from exc
    if list(table.columns) != [*leading, *CSV_COLUMNS]:
        raise InputError(f"{path}: columns {list(table.columns)} are not "
                         + (f"{list(leading)} + " if leading else "") + "eval.csv's")
    if not leading:
        return _table(table)
    return pd.concat([table[list(leading)], _table(table[list(CSV_COLUMNS)])], axis=1)


def write_outputs(table: pd.DataFrame, crops: Sequence[str], out_csv: Path,
                  out_summary: Path, ontology: Ontology) -> dict:
    summary = summarise(table, list(crops), ontology)
    write_table(table, out_csv)
    write_json(out_summary, _json_safe(summary))
    return summary


def evaluate(predictions_path: Path, inventory: Path | pd.DataFrame, spacing_nm: Sequence[float],
             out_csv: Path, out_summary: Path, ontology: Ontology,
             crops: list[str] | None = None, block: int = 128,
             truth: ZarrTruth | None = None, padding: str = "none") -> dict:
    """Score the validation crops (or `crops`); write eval.csv and eval_summary.json; return
    the summary. Raises InputError, writing nothing, when any input is wrong. `truth`: score
    at the Zarr ground truth's resolution; `padding`: data.padding_mask (score_table)."""
    table, scored = score_table(predictions_path, inventory, spacing_nm, Path(out_csv).parent,
                                ontology, crops, block, truth, padding)
    return write_outputs(table, scored, out_csv, out_summary, ontology)


def gather(tables: Sequence[Path], crops: Sequence[str], out_csv: Path,
           out_summary: Path, ontology: Ontology) -> dict:
    """eval.csv and eval_summary.json from per-crop tables (`tables[i]` holds the rows of
    `crops[i]`), the same files as one evaluate over every crop."""
    if len(tables) != len(crops):
        raise ValueError(f"gather: {len(tables)} tables for {len(crops)} crops")
    parts = []
    for path, crop in zip(tables, crops, strict=True):
        part = read_table(Path(path))
        if not part.empty and set(part["crop"]) != {crop}:
            raise InputError(f"{path}: rows of crops {sorted(set(part['crop']))}, expected {crop}")
        parts.append(part)
    return write_outputs(_table(pd.concat(parts, ignore_index=True)), crops, out_csv,
                         out_summary, ontology)


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, so the JSON stays standard."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
