"""PNG figures for the per-model report: training curves, challenge scores, example slices.

Each `plot_*` builds its Figure in a `*_figure` helper (tests read the figure's texts there) and
saves it atomically. Figures are made with `matplotlib.figure.Figure`, not pyplot: no global
figure registry to leak in a long Snakemake job and no GUI backend needed (Agg renders PNGs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from cellmapseg import layout
from cellmapseg.atomic import atomic_path
from cellmapseg.classes import CLASS_NAMES, INSTANCE_CLASSES
from cellmapseg.data import nifti, predictions
from cellmapseg.data.inventory import CROP_COLUMNS, require_columns
from cellmapseg.data.loading import mask_from_string
from cellmapseg.errors import InputError

DPI = 110

# One fixed colour per class, shared by every figure and model so that a colour means the same
# class everywhere. Membrane/lumen pairs share a hue (dark membrane, light lumen); no greys, so
# no class vanishes into the grey EM image.
CLASS_COLOURS: dict[str, str] = {
    "ecs": "#17becf", "pm": "#bcbd22",
    "mito_mem": "#ff7f0e", "mito_lum": "#ffbb78", "mito_ribo": "#8c564b",
    "golgi_mem": "#2ca02c", "golgi_lum": "#98df8a",
    "ves_mem": "#9467bd", "ves_lum": "#c5b0d5",
    "endo_mem": "#d62728", "endo_lum": "#ff9896",
    "er_mem": "#1f77b4", "er_lum": "#aec7e8",
    "nuc": "#e377c2",
}
# Predictions are multi-label and overlap: paint large regions first and thin membranes and
# small organelles last, so that a lumen never hides the membrane drawn around it.
PAINT_ORDER: tuple[str, ...] = (
    "ecs", "nuc", "mito_lum", "golgi_lum", "ves_lum", "endo_lum", "er_lum",
    "pm", "mito_mem", "golgi_mem", "ves_mem", "endo_mem", "er_mem", "mito_ribo",
)
OVERLAY_ALPHA = 0.55
NOT_ANNOTATED = "not annotated"
NOT_SCORED = "(not annotated: not scored)"
NO_VALIDATION = "no validation yet"

TRAIN_COLUMNS = ("epoch", "step", "train_loss", "lr")
METRIC_COLOURS = {"IoU": "#1f77b4", "Dice": "#9ecae1", "F1": "#2ca02c",
                  "norm. Hausdorff": "#9467bd", "combined": "#ff7f0e"}


def _save(fig: Figure, out: Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)  # the temp name has no .png: say the format


# ---------------------------------------------------------------- training curves


def plot_training(metrics: pd.DataFrame, model: str, out: Path) -> None:
    """Train loss and learning rate per optimizer step, validation Dice per class per epoch."""
    _save(training_figure(metrics, model), out)


def training_figure(metrics: pd.DataFrame, model: str) -> Figure:
    where = str(layout.RESULTS.train(model).metrics)
    require_columns(metrics, TRAIN_COLUMNS, where)
    if metrics.empty:
        raise InputError(f"{where}: no epochs recorded")
    m = metrics.sort_values("step").reset_index(drop=True)
    fig = Figure(figsize=(11, 12), layout="constrained")
    ax_loss, ax_lr, ax_val = fig.subplots(3, 1)
    epochs = f"{len(m)} epoch" + ("s" if len(m) != 1 else "")
    fig.suptitle(f"{model}: training, {epochs}, {int(m['step'].iloc[-1])} optimizer steps",
                 fontsize=14, fontweight="bold")
    _loss_panel(ax_loss, m)
    _lr_panel(ax_lr, m)
    _validation_panel(ax_val, m)
    return fig


def _epoch_ticks(ax: Axes, m: pd.DataFrame) -> None:
    """Top axis labelling the step at which each epoch ended with that epoch's number."""
    top = ax.secondary_xaxis("top")
    every = max(1, math.ceil(len(m) / 12))  # keep at most ~12 labels readable
    rows = m.iloc[::every]
    top.set_ticks(rows["step"].to_numpy(float), labels=[str(int(e)) for e in rows["epoch"]])
    top.set_xlabel("epoch (tick = step at which the epoch ended)")
    # min_n_ticks=1: with one epoch the default falls back to fractional steps
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _loss_panel(ax: Axes, m: pd.DataFrame) -> None:
    ax.plot(m["step"], m["train_loss"], marker="o", ms=4, color="#1f77b4",
            label="train loss (mean over the epoch)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (dimensionless)")
    ax.set_title("Training loss", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    _epoch_ticks(ax, m)


def _lr_panel(ax: Axes, m: pd.DataFrame) -> None:
    lr = m["lr"].to_numpy(float)
    ax.plot(m["step"], lr, marker="o", ms=4, color="#ff7f0e", label="learning rate at epoch end")
    positive = lr[lr > 0]
    title = "Learning rate"
    if positive.size and positive.max() / positive.min() > 10:
        ax.set_yscale("log")  # a warm-up or decay over decades is flat on a linear axis
        title += " (log scale)"
        if positive.size < lr.size:
            title += f"; {lr.size - positive.size} epoch(s) with lr = 0 not drawn"
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title, loc="left")
    ax.grid(alpha=0.3, which="both")
    _epoch_ticks(ax, m)


def _validation_panel(ax: Axes, m: pd.DataFrame) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice (0-1)")
    ax.set_xlim(0.5, float(m["epoch"].max()) + 0.5)
    ax.set_ylim(0, 1.05)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    has_mean = "val_dice_mean" in m.columns
    val = m[m["val_dice_mean"].notna()] if has_mean else m.iloc[:0]
    if val.empty:
        ax.set_title("Validation Dice per class", loc="left")
        ax.text(0.5, 0.5, NO_VALIDATION, transform=ax.transAxes, ha="center", va="center",
                fontsize=16, color="0.4")
        return
    columns = {c: f"val_dice_{c}" for c in CLASS_NAMES if f"val_dice_{c}" in m.columns}
    # A class never annotated in the validation crops is NaN in every row: leave it out of the
    # plot (a line at 0 would read as "scored and failed") and name it in the title instead.
    drawn = [c for c, col in columns.items() if val[col].notna().any()]
    unseen = [c for c in columns if c not in drawn]
    for c in drawn:
        ax.plot(val["epoch"], val[columns[c]], marker=".", lw=1.3, color=CLASS_COLOURS[c],
                label=c)
    ax.plot(val["epoch"], val["val_dice_mean"], marker="o", lw=3.5, color="black",
            label="mean (val_dice_mean)")
    best = val.loc[val["val_dice_mean"].idxmax()]
    ax.axvline(best["epoch"], color="black", ls=":", lw=1.2)
    # label on the side with more room, so a best final epoch is not cut at the axes edge
    right_half = best["epoch"] > (1 + m["epoch"].max()) / 2
    ax.annotate(f"best epoch {int(best['epoch'])}\nmean Dice {best['val_dice_mean']:.3f}",
                xy=(best["epoch"], best["val_dice_mean"]), xytext=(-8 if right_half else 8, 12),
                textcoords="offset points", ha="right" if right_half else "left",
                fontsize=9, fontweight="bold",
                bbox={"boxstyle": "round", "fc": "white", "alpha": 0.85})
    title = "Validation Dice per class (thick black: mean; dotted: best epoch)"
    if unseen:
        title += f"\nnot annotated in any validation crop, not drawn: {', '.join(unseen)}"
    ax.set_title(title, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="class")


# ---------------------------------------------------------------- challenge scores


def plot_scores(summary: dict, model: str, out: Path) -> None:
    """Per-class challenge scores from eval_summary.json, unscored and guard-skipped marked."""
    _save(scores_figure(summary, model), out)


def _class_metrics(name: str, entry: Mapping[str, Any], where: str) -> list[tuple[str, float]]:
    keys = ({"F1": "f1", "norm. Hausdorff": "mean_norm_hausdorff", "combined": "combined"}
            if entry.get("kind") == "instance" else {"IoU": "iou", "Dice": "dice"})
    missing = [k for k in (*keys.values(), "crops") if k not in entry]
    if missing:
        raise InputError(f"{where}: class {name!r} lacks key {missing[0]!r}")
    return [(label, float(entry[key])) for label, key in keys.items()]


def guard_note(entry: Mapping[str, Any]) -> str:
    """Text for an instance class whose crops the challenge's absurd-count guard skipped."""
    skipped, crops = int(entry.get("skipped_crops", 0)), int(entry.get("crops", 0))
    if skipped <= 0:
        return ""
    if skipped >= crops:
        return (f"all {crops} crops skipped by the challenge's guard:\n"
                f"score not informative (1.0 by rule, not by prediction)")
    return f"{skipped} of {crops} crops skipped by the challenge's guard (left out of the pool)"


def scores_figure(summary: Mapping[str, Any], model: str) -> Figure:
    where = str(layout.RESULTS.eval_summary(model))
    classes = summary.get("classes")
    if not isinstance(classes, Mapping):
        raise InputError(f"{where}: key 'classes' missing")
    unknown = [c for c in classes if c not in CLASS_NAMES]
    if unknown:
        raise InputError(f"{where}: unknown class {unknown[0]!r}")
    fig = Figure(figsize=(11, 11), layout="constrained")
    ax = fig.subplots()
    all_skipped = []
    for slot, name in enumerate(CLASS_NAMES):
        entry = classes.get(name)
        if entry is None:
            _unscored_slot(ax, slot)
        elif _score_slot(ax, slot, name, entry, where):
            all_skipped.append(name)
    ax.set_yticks(range(len(CLASS_NAMES)), labels=[_slot_label(n, classes) for n in CLASS_NAMES])
    ax.set_ylim(len(CLASS_NAMES) - 0.5, -0.5)  # channel order from the top
    ax.set_xlim(0, 1.3)  # room right of a full bar for its value label
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("score (0-1, higher is better; norm. Hausdorff = 1.01^(-d / |voxel|))")
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=c, label=k) for k, c in METRIC_COLOURS.items()]
    handles.append(Patch(facecolor="0.92", edgecolor="0.5", hatch="//",
                         label="not scored (not annotated)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="metric")
    n_crops = summary.get("n_crops", len(summary.get("crops", [])))
    fig.suptitle(f"{model}: challenge scores on {n_crops} validation crops "
                 f"({summary.get('metric_version', 'metric version unknown')})",
                 fontsize=14, fontweight="bold")
    ax.set_title(_totals_text(summary, all_skipped), loc="left", fontsize=10)
    return fig


def _slot_label(name: str, classes: Mapping[str, Any]) -> str:
    entry = classes.get(name)
    if entry is None:
        return f"{name}\n(0 crops)"
    return f"{name}\n({entry.get('kind', '?')}, {entry.get('crops', '?')} crops)"


def _unscored_slot(ax: Axes, slot: int) -> None:
    # A hatched band, not a zero bar: the class was never annotated, so it has no score at all.
    ax.axhspan(slot - 0.45, slot + 0.45, facecolor="0.92", edgecolor="0.6", hatch="//", lw=0)
    ax.text(0.02, slot, "not scored (not annotated in any validation crop)", va="center",
            fontsize=9, color="0.3", style="italic",
            bbox={"fc": "white", "ec": "none", "alpha": 0.8})


def _score_slot(ax: Axes, slot: int, name: str, entry: Mapping[str, Any], where: str) -> bool:
    """Bars of one scored class; True when the guard skipped every crop of it."""
    metrics = _class_metrics(name, entry, where)
    note = guard_note(entry) if entry.get("kind") == "instance" else ""
    skipped_all = note.startswith("all ")
    height = 0.8 / len(metrics)
    for i, (label, value) in enumerate(metrics):
        y = slot - 0.4 + height * (i + 0.5)
        ax.barh(y, value, height=height * 0.92, color=METRIC_COLOURS[label],
                hatch="xx" if skipped_all else None,
                edgecolor="#c00000" if skipped_all else "none", lw=1.5 if skipped_all else 0)
        ax.text(value + 0.01, y, f"{label} {value:.3f}", va="center", fontsize=7.5)
    if note:
        ax.text(0.5, slot, note, ha="center", va="center", fontsize=9, fontweight="bold",
                color="#c00000", bbox={"fc": "white", "ec": "#c00000", "alpha": 0.95})
    return skipped_all


def _totals_text(summary: Mapping[str, Any], all_skipped: Sequence[str]) -> str:
    def num(key: str) -> str:
        value = summary.get(key)
        return "n/a" if value is None else f"{float(value):.3f}"

    text = (f"overall {num('overall')} = sqrt(semantic mean IoU {num('semantic_mean_iou')} "
            f"x instance mean combined {num('instance_mean_combined')})")
    if all_skipped:
        text += (f"\nWARNING: {', '.join(all_skipped)} scored 1.0 only because the guard "
                 f"skipped all its crops: instance mean and overall are not informative")
    return text


# ---------------------------------------------------------------- example slices


def plot_examples(store_path: Path, inventory: pd.DataFrame, model: str, out: Path,
                  n_crops: int = 3) -> list[str]:
    """Image / truth / prediction on one slice of the first n_crops validation crops."""
    fig, shown = examples_figure(store_path, inventory, model, n_crops)
    _save(fig, out)
    return shown


def examples_figure(store_path: Path, inventory: pd.DataFrame, model: str,
                    n_crops: int = 3) -> tuple[Figure, list[str]]:
    require_columns(inventory, CROP_COLUMNS, "inventory")
    rows = inventory[inventory["split"] == "validation"].head(max(n_crops, 0))
    if rows.empty:
        fig = Figure(figsize=(8, 2))
        fig.text(0.5, 0.5, f"{model}: no validation crops in the inventory", ha="center")
        return fig, []
    store = predictions.open_store(Path(store_path))
    fig = Figure(figsize=(22, 5.6 * len(rows)), layout="compressed")
    fig.suptitle(f"{model}: example slices of validation crops (ground truth vs prediction)",
                 fontsize=14, fontweight="bold")
    subfigs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for sub, (_, row) in zip(subfigs, rows.iterrows(), strict=True):
        _crop_row(sub, store, Path(store_path), row)
    return fig, [str(c) for c in rows["crop"]]


def _best_slice(label: np.ndarray) -> int:
    """`_pick_slice` of a label already in memory."""
    return _pick_slice(np.stack([np.bincount(s.ravel(), minlength=256) for s in label]))


def _pick_slice(counts: np.ndarray) -> int:
    """Index along axis 0 showing the most annotated classes, then the most foreground, from
    the (slices, label values) voxel counts.

    Foreground alone picks slices filled by one large class (ecs covers whole slices of the
    synthetic crops), which say little; the class count comes first for that reason.
    """
    classes = np.count_nonzero(counts[:, 1:], axis=1)
    foreground = counts[:, 1:].sum(axis=1)
    return int(np.lexsort((-foreground, -classes))[0])  # last key sorts first


def _crop_row(sub: SubFigure, store: zarr.Group, path: Path, row: pd.Series) -> None:
    shape = (int(row["d"]), int(row["h"]), int(row["w"]))
    arrays = predictions.crop_arrays(store, path, str(row["crop_id"]), str(row["crop"]),
                                     shape, CLASS_NAMES)
    # Streamed, one slice at a time: counts per slice to choose it, then the slice itself.
    for key in ("label", "image"):
        header = nifti.read_header(row[key])  # one line for a missing or damaged file
        if header.shape3d != shape:
            raise InputError(f"{row[key]}: {key} shape {header.shape} != inventory shape "
                             f"{shape}")
    z = _pick_slice(nifti.axis0_counts(row["label"], 256))
    truth = nifti.axis0_slice(row["label"], z).astype(np.uint8)
    image = nifti.axis0_slice(row["image"], z).astype(np.float32)
    preds = {name: np.asarray(arr[z]) for name, arr in arrays.items()}  # reads only slice z
    text = row["annotated_classes"]
    annotated = mask_from_string(text if isinstance(text, str) else "",
                                 f"crop {row['crop']}: annotated_classes") > 0
    voxel = arrays[CLASS_NAMES[0]].attrs.get("voxel_size")
    size = f", voxel {' x '.join(f'{v:g}' for v in voxel)} nm" if voxel else ""
    sub.suptitle(f"{row['crop']} ({row['crop_id']}): slice {z} of {shape[0]} along axis 0 "
                 f"(most annotated classes, then foreground: {np.count_nonzero(truth)} px)"
                 f"{size}", fontsize=12, fontweight="bold")
    # The prediction is split in two panels: classes annotated here (scored, to compare with
    # the truth) and classes not annotated here (not scored); mixed together, a model that
    # predicts every class everywhere buries the scored prediction under unscored ones.
    ax_img, ax_gt, ax_pred, ax_un, ax_tab = sub.subplots(
        1, 5, width_ratios=[1, 1, 1, 1, 1.25])
    lo, hi = np.percentile(image, (0.5, 99.5))
    for ax in (ax_img, ax_gt, ax_pred, ax_un):
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_xlabel("axis 2 (voxels)")
        ax.set_ylabel("axis 1 (voxels)")
    ax_img.set_title("EM image")
    ax_gt.imshow(_truth_rgba(truth), interpolation="nearest")
    names = np.array(CLASS_NAMES)
    ax_gt.set_title(f"ground truth: {int(annotated.sum())} annotated classes\n"
                    f"{int((~annotated).sum())} {NOT_ANNOTATED}: unknown, not empty (see table)",
                    fontsize=10)
    _draw_prediction(ax_pred, preds, names[annotated])
    ax_pred.set_title("prediction of the annotated classes\n(scored)", fontsize=10)
    _draw_prediction(ax_un, preds, names[~annotated])
    ax_un.set_title(f"prediction of the classes {NOT_ANNOTATED} here\n"
                    f"{NOT_SCORED}", fontsize=10, color="0.35")
    for spine in ax_un.spines.values():  # dashed grey frame: this panel is not scored
        spine.set(linestyle="--", edgecolor="0.5", linewidth=2)
    if annotated.all():
        ax_un.text(0.5, 0.5, "every class is annotated in this crop", ha="center",
                   va="center", transform=ax_un.transAxes, bbox={"fc": "white"})
    _class_table(ax_tab, truth, preds, annotated)


def _truth_rgba(truth: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 4), np.float32)  # value v (class v-1) -> colour; 0 stays transparent
    for c, name in enumerate(CLASS_NAMES):
        lut[c + 1] = to_rgba(CLASS_COLOURS[name], OVERLAY_ALPHA)
    return lut[truth]


def _instance_edges(ids: np.ndarray) -> np.ndarray:
    """Pixels where the instance id changes (between instances or to background)."""
    edge = np.zeros(ids.shape, bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    edge[:-1, :] |= ids[1:, :] != ids[:-1, :]
    return edge & (ids > 0)


def _draw_prediction(ax: Axes, preds: Mapping[str, np.ndarray], classes: Sequence[str]) -> None:
    """Overlay the predicted masks of `classes`; instances get dark outlines."""
    rgba = np.zeros((*next(iter(preds.values())).shape, 4), np.float32)
    for name in (n for n in PAINT_ORDER if n in classes):
        rgba[preds[name] > 0] = to_rgba(CLASS_COLOURS[name], OVERLAY_ALPHA)
        if name in INSTANCE_CLASSES:
            rgba[_instance_edges(preds[name])] = to_rgba("black", 0.9)
    ax.imshow(rgba, interpolation="nearest")


def _class_table(ax: Axes, truth: np.ndarray, preds: Mapping[str, np.ndarray],
                 annotated: np.ndarray) -> None:
    """Per class: colour swatch, truth status and pixels on this slice, predicted pixels."""
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(len(CLASS_NAMES) + 1.5, -0.5)
    for x, head in ((0.09, "class"), (0.34, "ground truth (slice)"), (0.68, "prediction (slice)")):
        ax.text(x, 0, head, fontsize=9, fontweight="bold", va="center")
    for c, name in enumerate(CLASS_NAMES):
        y = c + 1
        pred = preds[name]
        n_pred = int(np.count_nonzero(pred))
        pred_text = f"{n_pred} px"
        if name in INSTANCE_CLASSES:
            pred_text += f", {len(np.unique(pred[pred > 0]))} inst."
        if annotated[c]:
            swatch = Rectangle((0.0, y - 0.35), 0.07, 0.7, facecolor=CLASS_COLOURS[name],
                               edgecolor="black", lw=0.5)
            ax.text(0.09, y, name, fontsize=9, va="center")
            ax.text(0.34, y, f"annotated: {np.count_nonzero(truth == c + 1)} px", fontsize=8.5,
                    va="center")
        else:
            swatch = Rectangle((0.0, y - 0.35), 0.07, 0.7, facecolor="0.9",
                               edgecolor=CLASS_COLOURS[name], hatch="////", lw=1.0)
            ax.text(0.09, y, name, fontsize=9, va="center", color="0.45", style="italic")
            ax.text(0.34, y, NOT_ANNOTATED.upper(), fontsize=8.5, va="center", color="0.45",
                    fontweight="bold")
            if n_pred:
                pred_text += f"\n{NOT_SCORED}"
        ax.add_patch(swatch)
        ax.text(0.68, y, pred_text, fontsize=8, va="center",
                color="black" if annotated[c] else "0.35")
    ax.text(0.0, len(CLASS_NAMES) + 1.1,
            f"{NOT_ANNOTATED.upper()}: the class was not labelled in this crop, so its truth is\n"
            "unknown (not empty) and its prediction is not scored.",
            fontsize=8, va="center", color="0.3")
