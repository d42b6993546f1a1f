"""PNG figures for the per-model report: training curves, challenge scores, example slices.

Each `plot_*` builds its Figure in a `*_figure` helper (tests read the figure's texts there) and
saves it atomically. Figures are made with `matplotlib.figure.Figure`, not pyplot: no global
figure registry to leak in a long Snakemake job and no GUI backend needed (Agg renders PNGs).

No class list is fixed here: the training curves take theirs from metrics.csv's val_dice_*
columns (the atomic classes), the scores from eval_summary.json's `ontology`, the example slices
from the predictions store's `classes` attribute (atomic classes, then groups).
"""

from __future__ import annotations

import colorsys
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
import zarr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import rgb_to_hsv, to_hex, to_rgba
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from cellmapseg import layout
from cellmapseg.atomic import atomic_path
from cellmapseg.classes import Ontology
from cellmapseg.data import predictions, volume_io
from cellmapseg.data.inventory import CROP_COLUMNS, require_columns
from cellmapseg.data.loading import mask_from_string
from cellmapseg.data.padding import crop_padding
from cellmapseg.errors import InputError

DPI = 110

# One fixed colour per class of the spec's 14, shared by every figure and model so that a colour
# means the same class everywhere. Membrane/lumen pairs share a hue (dark membrane, light lumen);
# no greys, so no class vanishes into the grey EM image. Other classes get the free colours of
# `class_colours`, in ontology order.
CLASS_COLOURS: dict[str, str] = {
    "ecs": "#17becf", "pm": "#bcbd22",
    "mito_mem": "#ff7f0e", "mito_lum": "#ffbb78", "mito_ribo": "#8c564b",
    "golgi_mem": "#2ca02c", "golgi_lum": "#98df8a",
    "ves_mem": "#9467bd", "ves_lum": "#c5b0d5",
    "endo_mem": "#d62728", "endo_lum": "#ff9896",
    "er_mem": "#1f77b4", "er_lum": "#aec7e8",
    "nuc": "#e377c2",
}
# The qualitative palettes without their greys: what classes outside CLASS_COLOURS draw from.
PALETTE: tuple[str, ...] = tuple(
    to_hex(c) for name in ("tab20", "tab20b", "tab20c") for c in colormaps[name].colors
    if rgb_to_hsv(c[:3])[1] > 0.15)
OVERLAY_ALPHA = 0.55
NOT_ANNOTATED = "not annotated"
NOT_SCORED = "(not annotated: not scored)"
NO_VALIDATION = "no validation yet"

TRAIN_COLUMNS = ("epoch", "step", "train_loss", "lr")
METRIC_COLOURS = {"IoU": "#1f77b4", "Dice": "#9ecae1", "F1": "#2ca02c",
                  "norm. Hausdorff": "#9467bd", "combined": "#ff7f0e"}


def class_colours(names: Iterable[str]) -> dict[str, str]:
    """A colour per class: CLASS_COLOURS' where it has one, else the next PALETTE colour no
    class uses (those of no fixed class first), then spread hues. The same names in the same
    order get the same colours (every figure of a model passes the ontology's atomic classes)."""
    names = list(dict.fromkeys(names))
    used = {CLASS_COLOURS[n] for n in names if n in CLASS_COLOURS}
    fixed = set(CLASS_COLOURS.values())
    # colours no fixed class owns first: a new class then looks like none of the spec's
    free = ([c for c in PALETTE if c not in fixed]
            + [c for c in PALETTE if c in fixed and c not in used])
    out: dict[str, str] = {}
    extra = 0
    for name in names:
        if name in CLASS_COLOURS:
            out[name] = CLASS_COLOURS[name]
            continue
        if extra < len(free):
            out[name] = free[extra]
        else:  # golden-ratio hue steps: neighbours stay apart however many there are
            k = extra - len(free)
            out[name] = to_hex(colorsys.hsv_to_rgb((0.13 + 0.618034 * k) % 1.0,
                                                   0.75 - 0.2 * (k % 2), 0.9 - 0.25 * (k % 3 == 2)))
        extra += 1
    return out


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
    # one val_dice_{class} column per atomic class, in channel order (train.loop writes them)
    columns = {c[len("val_dice_"):]: c for c in m.columns
               if c.startswith("val_dice_") and c != "val_dice_mean"}
    colours = class_colours(columns)
    # A class never annotated in the validation crops is NaN in every row: leave it out of the
    # plot (a line at 0 would read as "scored and failed") and name it in the title instead.
    drawn = [c for c, col in columns.items() if val[col].notna().any()]
    unseen = [c for c in columns if c not in drawn]
    for c in drawn:
        ax.plot(val["epoch"], val[columns[c]], marker=".", lw=1.3, color=colours[c], label=c)
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
        title += "\n" + textwrap.fill(
            f"not annotated in any validation crop, not drawn: {', '.join(unseen)}", 130)
    ax.set_title(title, loc="left")
    # a large ontology: more legend columns rather than entries running off the figure
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="class",
              ncol=max(1, math.ceil((len(drawn) + 1) / 18)))


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


GROUP_COLOUR = "#08519c"
GROUPS_NOTE = "below: groups\n(unions of atomic\nclasses, in blue)"


@dataclass(frozen=True)
class SummaryClasses:
    """The classes a scores figure shows: every class the ontology predicts, atomic first."""

    atomic: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]
    instance: frozenset[str]

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.atomic, *self.groups)


def summary_classes(summary: Mapping[str, Any], where: str) -> SummaryClasses:
    """From eval_summary.json's `ontology`; a summary written before it was recorded: its
    scored classes, as atomic classes of the kind each says."""
    classes = summary.get("classes")
    if not isinstance(classes, Mapping):
        raise InputError(f"{where}: key 'classes' missing")
    onto = summary.get("ontology")
    if onto is None:
        instance = frozenset(n for n, e in classes.items()
                             if isinstance(e, Mapping) and e.get("kind") == "instance")
        return SummaryClasses(tuple(classes), {}, instance)
    try:
        return SummaryClasses(tuple(onto["atomic"]),
                              {g: tuple(m) for g, m in onto.get("groups", {}).items()},
                              frozenset(onto.get("instance", ())))
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{where}: key 'ontology' is not an ontology summary ({exc})") from exc


def scores_figure(summary: Mapping[str, Any], model: str) -> Figure:
    where = str(layout.RESULTS.eval_summary(model))
    k = summary_classes(summary, where)
    classes = summary["classes"]
    names = k.names
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise InputError(f"{where}: unknown class {unknown[0]!r} (not in its ontology)")
    fig = Figure(figsize=(11, scores_height(len(names))), layout="constrained")
    ax = fig.subplots()
    all_skipped = []
    for slot, name in enumerate(names):
        entry = classes.get(name)
        if entry is None:
            _unscored_slot(ax, slot)
        elif _score_slot(ax, slot, name, entry, where):
            all_skipped.append(name)
    ax.set_yticks(range(len(names)), labels=[_slot_label(n, classes, k) for n in names])
    for tick, name in zip(ax.get_yticklabels(), names, strict=True):
        if name in k.groups:
            tick.set(color=GROUP_COLOUR, fontstyle="italic")
    if k.groups:  # the groups follow the atomic classes, under a rule of their own
        ax.axhline(len(k.atomic) - 0.5, color=GROUP_COLOUR, lw=1.5, ls="--")
    ax.set_ylim(len(names) - 0.5, -0.5)  # ontology order from the top
    ax.set_xlim(0, 1.3)  # room right of a full bar for its value label
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("score (0-1, higher is better; norm. Hausdorff = 1.01^(-d / |voxel|))")
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=c, label=k) for k, c in METRIC_COLOURS.items()]
    handles.append(Patch(facecolor="0.92", edgecolor="0.5", hatch="//",
                         label="not scored (not annotated)"))
    if k.groups:
        handles.append(Line2D([], [], color=GROUP_COLOUR, lw=1.5, ls="--", label=GROUPS_NOTE))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="metric")
    n_crops = summary.get("n_crops", len(summary.get("crops", [])))
    fig.suptitle(f"{model}: challenge scores on {n_crops} validation crops "
                 f"({summary.get('metric_version', 'metric version unknown')})",
                 fontsize=14, fontweight="bold")
    ax.set_title(_totals_text(summary, all_skipped), loc="left", fontsize=10)
    return fig


def scores_height(n_classes: int) -> float:
    """Inches of the scores figure: 0.6 per class, at least 11."""
    return max(11.0, 0.6 * n_classes)


def _slot_label(name: str, classes: Mapping[str, Any], k: SummaryClasses) -> str:
    entry = classes.get(name)
    head = f"{name} [group of {len(k.groups[name])}]" if name in k.groups else name
    if entry is None:
        kind = "instance" if name in k.instance else "semantic"
        return f"{head}\n({kind}, 0 crops)"
    return f"{head}\n({entry.get('kind', '?')}, {entry.get('crops', '?')} crops)"


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


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _totals_text(summary: Mapping[str, Any], all_skipped: Sequence[str]) -> str:
    text = (f"overall {_num(summary.get('overall'))} = sqrt(semantic mean IoU "
            f"{_num(summary.get('semantic_mean_iou'))} x instance mean combined "
            f"{_num(summary.get('instance_mean_combined'))}) over the classes scored")
    board = summary.get("leaderboard")
    if isinstance(board, Mapping):
        text += "\n" + textwrap.fill(
            f"leaderboard {_num(board.get('overall'))} over the challenge's "
            f"{board.get('n_tested', '?')} tested classes: {board.get('line', '')}", 110)
    if all_skipped:
        text += (f"\nWARNING: {', '.join(all_skipped)} scored 1.0 only because the guard "
                 f"skipped all its crops: instance mean and overall are not informative")
    return text


# ---------------------------------------------------------------- example slices


def plot_examples(store_path: Path, inventory: pd.DataFrame, model: str, out: Path,
                  n_crops: int = 3, labels: Mapping[str, int] | None = None) -> list[str]:
    """Image / truth / prediction on one slice of the first n_crops validation crops."""
    fig, shown = examples_figure(store_path, inventory, model, n_crops, labels)
    _save(fig, out)
    return shown


def config_labels(path: Path) -> dict[str, int] | None:
    """{atomic class: label value} of a resolved config (e.g. the training's, beside its
    metrics.csv); None when the file is absent or holds no readable `classes.atomic`."""
    try:
        atomic = (yaml.safe_load(Path(path).read_text()) or {})["classes"]["atomic"]
        return {str(e["name"]): int(e["label"]) for e in atomic}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def store_ontology(store: zarr.Group, path: Path,
                   labels: Mapping[str, int] | None = None) -> tuple[Ontology, bool]:
    """The ontology the predictions were made with (the store's root attribute `classes`), and
    whether the label values are known: `labels` ({atomic class: label value}, e.g. from the
    training's config) gives them; without it the spec's convention (channel + 1) is assumed."""
    summary = store.attrs.get("classes")
    if not isinstance(summary, Mapping) or not isinstance(summary.get("atomic"), list):
        raise InputError(f"{path}: root attribute 'classes' missing (the ontology the "
                         "predictions were made with; written by predict)")
    atomic = tuple(str(n) for n in summary["atomic"])
    known = labels is not None and all(n in labels for n in atomic)
    values = (tuple(int(labels[n]) for n in atomic) if known and labels is not None
              else tuple(range(1, len(atomic) + 1)))
    groups = tuple((str(g), tuple(m)) for g, m in dict(summary.get("groups", {})).items())
    onto = Ontology(atomic=atomic, labels=values, groups=groups,
                    instance=frozenset(summary.get("instance", ())),
                    tested=tuple(summary.get("tested", ())), frequency=(0.5,) * len(atomic))
    return onto, known


@dataclass(frozen=True)
class CropSlice:
    """What one row of the examples figure shows of a crop: one slice of everything."""

    row: pd.Series
    z: int
    depth: int
    image: np.ndarray
    truth: np.ndarray  # label values
    preds: dict[str, np.ndarray]  # every class of the ontology
    annotated: tuple[str, ...]  # the classes annotated in the crop (ontology.annotated)
    voxel: Sequence[float] | None
    padding: np.ndarray | None = None  # the slice's black EM padding (border runs), if any

    def shown(self, ontology: Ontology) -> list[str]:
        """The classes the table lists: annotated here, or predicted on this slice."""
        return [n for n in ontology.names
                if n in self.annotated or np.count_nonzero(self.preds[n])]


def examples_figure(store_path: Path, inventory: pd.DataFrame, model: str,
                    n_crops: int = 3, labels: Mapping[str, int] | None = None
                    ) -> tuple[Figure, list[str]]:
    require_columns(inventory, CROP_COLUMNS, "inventory")
    rows = inventory[inventory["split"] == "validation"].head(max(n_crops, 0))
    if rows.empty:
        fig = Figure(figsize=(8, 2))
        fig.text(0.5, 0.5, f"{model}: no validation crops in the inventory", ha="center")
        return fig, []
    store = predictions.open_store(Path(store_path))
    ontology, known = store_ontology(store, Path(store_path), labels)
    colours = class_colours(ontology.atomic)
    slices = [_read_slice(store, Path(store_path), row, ontology) for _, row in rows.iterrows()]
    # a row per listed class in each crop's table: a large ontology gets taller rows
    heights = [max(5.6, 2.2 + 0.24 * (len(s.shown(ontology)) + 2)) for s in slices]
    fig = Figure(figsize=(22, sum(heights) + 0.6), layout="compressed")
    title = f"{model}: example slices of validation crops (ground truth vs prediction)"
    if not known:
        title += "\n(truth colours assume label value = channel + 1: the label values of " \
                 "the classes were not given)"
    fig.suptitle(title, fontsize=14, fontweight="bold")
    subfigs = fig.subfigures(len(rows), 1, squeeze=False, height_ratios=heights)[:, 0]
    for sub, crop in zip(subfigs, slices, strict=True):
        _crop_row(sub, crop, ontology, colours)
    return fig, [str(c) for c in rows["crop"]]


def _best_slice(label: np.ndarray) -> int:
    """`_pick_slice` of a label already in memory."""
    return _pick_slice(np.stack([np.bincount(s.ravel(), minlength=256) for s in label]))


def _pick_slice(counts: np.ndarray) -> int:
    """Index along axis 0 showing the most annotated classes, then the most foreground, from
    the (slices, label values) voxel counts (column 0: background).

    Foreground alone picks slices filled by one large class (ecs covers whole slices of the
    synthetic crops), which say little; the class count comes first for that reason.
    """
    classes = np.count_nonzero(counts[:, 1:], axis=1)
    foreground = counts[:, 1:].sum(axis=1)
    return int(np.lexsort((-foreground, -classes))[0])  # last key sorts first


def _read_slice(store: zarr.Group, path: Path, row: pd.Series, ontology: Ontology) -> CropSlice:
    shape = (int(row["d"]), int(row["h"]), int(row["w"]))
    arrays = predictions.crop_arrays(store, path, str(row["crop_id"]), str(row["crop"]),
                                     shape, ontology.names)
    # Streamed, one slice at a time: counts per slice to choose it, then the slice itself.
    for key in ("label", "image"):
        header = volume_io.read_header(row[key])  # one line for a missing or damaged file
        if header.shape3d != shape:
            raise InputError(f"{row[key]}: {key} shape {header.shape} != inventory shape "
                             f"{shape}")
    counts = volume_io.axis0_counts(row["label"], 256)
    z = _pick_slice(counts[:, [0, *ontology.labels]])  # the ontology's label values only
    text = row["annotated_classes"]
    channels = np.flatnonzero(mask_from_string(
        text if isinstance(text, str) else "", f"crop {row['crop']}: annotated_classes",
        ontology.num_channels))
    return CropSlice(
        row=row, z=z, depth=shape[0],
        image=volume_io.axis0_slice(row["image"], z).astype(np.float32),
        truth=volume_io.axis0_slice(row["label"], z).astype(np.uint8),
        preds={name: np.asarray(arr[z]) for name, arr in arrays.items()},  # only slice z
        annotated=ontology.annotated(int(c) for c in channels),
        voxel=arrays[ontology.names[0]].attrs.get("voxel_size"),
        padding=_padding_slice(row, z, shape))


def _padding_slice(row: pd.Series, z: int, shape: tuple[int, int, int]) -> np.ndarray | None:
    """Slice z of the crop's black border padding, from the inventory's runs (None: none)."""
    padding = crop_padding("border", row.get("padding", ""))
    if padding is None or padding.runs is None:
        return None
    mask = padding.runs.mask((slice(z, z + 1), slice(0, shape[1]), slice(0, shape[2])))[0]
    return mask if mask.any() else None


def _crop_row(sub: SubFigure, crop: CropSlice, ontology: Ontology,
              colours: Mapping[str, str]) -> None:
    row, truth = crop.row, crop.truth
    size = f", voxel {' x '.join(f'{v:g}' for v in crop.voxel)} nm" if crop.voxel else ""
    known = np.isin(truth, ontology.labels)
    sub.suptitle(f"{row['crop']} ({row['crop_id']}): slice {crop.z} of {crop.depth} along "
                 f"axis 0 (most annotated classes, then foreground: {np.count_nonzero(known)} "
                 f"px){size}", fontsize=12, fontweight="bold")
    # The prediction is split in two panels: classes annotated here (scored, to compare with
    # the truth) and classes not annotated here (not scored); mixed together, a model that
    # predicts every class everywhere buries the scored prediction under unscored ones.
    ax_img, ax_gt, ax_pred, ax_un, ax_tab = sub.subplots(
        1, 5, width_ratios=[1, 1, 1, 1, 1.25])
    lo, hi = np.percentile(crop.image, (0.5, 99.5))
    for ax in (ax_img, ax_gt, ax_pred, ax_un):
        ax.imshow(crop.image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_xlabel("axis 2 (voxels)")
        ax.set_ylabel("axis 1 (voxels)")
    ax_img.set_title("EM image")
    ax_gt.imshow(_truth_rgba(truth, ontology, colours), interpolation="nearest")
    n_annotated = sum(1 for n in ontology.atomic if n in crop.annotated)
    ax_gt.set_title(f"ground truth: {n_annotated} annotated classes\n"
                    f"{ontology.num_channels - n_annotated} {NOT_ANNOTATED}: unknown, not empty "
                    "(see table)", fontsize=10)
    scored = [n for n in ontology.names if n in crop.annotated]
    unscored = [n for n in ontology.names if n not in crop.annotated]
    _draw_prediction(ax_pred, crop.preds, ontology, colours, scored)
    ax_pred.set_title("prediction of the annotated classes\n(scored)", fontsize=10)
    _draw_prediction(ax_un, crop.preds, ontology, colours, unscored)
    ax_un.set_title(f"prediction of the classes {NOT_ANNOTATED} here\n"
                    f"{NOT_SCORED}", fontsize=10, color="0.35")
    for spine in ax_un.spines.values():  # dashed grey frame: this panel is not scored
        spine.set(linestyle="--", edgecolor="0.5", linewidth=2)
    if not unscored:
        ax_un.text(0.5, 0.5, "every class is annotated in this crop", ha="center",
                   va="center", transform=ax_un.transAxes, bbox={"fc": "white"})
    if crop.padding is not None:
        for ax in (ax_img, ax_gt, ax_pred):
            ax.contourf(crop.padding.astype(np.uint8), levels=[0.5, 1.5], colors="none",
                        hatches=["///"])
            ax.contour(crop.padding.astype(np.uint8), levels=[0.5], colors="orange",
                       linewidths=1.2)
        ax_img.set_title("EM image (hatched: black padding, kept out of the loss and the\n"
                         "scores with data.padding_mask)", fontsize=10)
    _class_table(ax_tab, crop, ontology, colours)


def _truth_rgba(truth: np.ndarray, ontology: Ontology, colours: Mapping[str, str]
                ) -> np.ndarray:
    lut = np.zeros((256, 4), np.float32)  # label value -> its class's colour; others clear
    for name, value in zip(ontology.atomic, ontology.labels, strict=True):
        lut[value] = to_rgba(colours[name], OVERLAY_ALPHA)
    return lut[truth]


def _instance_edges(ids: np.ndarray) -> np.ndarray:
    """Pixels where the instance id changes (between instances or to background)."""
    edge = np.zeros(ids.shape, bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    edge[:-1, :] |= ids[1:, :] != ids[:-1, :]
    return edge & (ids > 0)


def _draw_prediction(ax: Axes, preds: Mapping[str, np.ndarray], ontology: Ontology,
                     colours: Mapping[str, str], classes: Sequence[str]) -> None:
    """Overlay the predicted masks of the atomic classes among `classes` (a group is their
    union, so it adds no colour); the instances of every instance class among them, atomic or
    group, get dark outlines."""
    rgba = np.zeros((*next(iter(preds.values())).shape, 4), np.float32)
    atomic = [n for n in ontology.atomic if n in classes]
    # Predictions are multi-label and overlap: paint large regions first and thin membranes
    # and small organelles last, so that a lumen never hides the membrane drawn around it.
    for name in sorted(atomic, key=lambda n: -np.count_nonzero(preds[n])):
        rgba[preds[name] > 0] = to_rgba(colours[name], OVERLAY_ALPHA)
    for name in classes:
        if ontology.is_instance(name):
            rgba[_instance_edges(preds[name])] = to_rgba("black", 0.9)
    ax.imshow(rgba, interpolation="nearest")


def _swatch(ax: Axes, y: float, name: str, ontology: Ontology, colours: Mapping[str, str],
            annotated: bool) -> None:
    """An atomic class's colour; a group's: its members' colours side by side."""
    members = [ontology.atomic[c] for c in ontology.members(name)]
    width = 0.07 / len(members)
    for i, member in enumerate(members):
        x = i * width
        if annotated:
            patch = Rectangle((x, y - 0.35), width, 0.7, facecolor=colours[member],
                              edgecolor="none")
        else:
            patch = Rectangle((x, y - 0.35), width, 0.7, facecolor="0.9",
                              edgecolor=colours[member], hatch="////", lw=1.0)
        ax.add_patch(patch)
    ax.add_patch(Rectangle((0.0, y - 0.35), 0.07, 0.7, fill=False, edgecolor="black",
                           lw=1.2 if ontology.is_group(name) else 0.5))


def _class_table(ax: Axes, crop: CropSlice, ontology: Ontology,
                 colours: Mapping[str, str]) -> None:
    """Per class annotated in the crop or predicted on the slice: colour swatch, truth status
    and pixels on this slice, predicted pixels; the other classes in one line below."""
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    shown = crop.shown(ontology)
    hidden = [n for n in ontology.names if n not in shown]
    ax.set_ylim(len(shown) + 2.5, -0.5)
    for x, head in ((0.09, "class"), (0.34, "ground truth (slice)"), (0.68, "prediction (slice)")):
        ax.text(x, 0, head, fontsize=9, fontweight="bold", va="center")
    for y, name in enumerate(shown, start=1):
        pred = crop.preds[name]
        n_pred = int(np.count_nonzero(pred))
        pred_text = f"{n_pred} px"
        if ontology.is_instance(name):
            pred_text += f", {len(np.unique(pred[pred > 0]))} inst."
        annotated = name in crop.annotated
        label = f"{name} (group)" if ontology.is_group(name) else name
        _swatch(ax, y, name, ontology, colours, annotated)
        if annotated:
            n_true = np.count_nonzero(np.isin(crop.truth, ontology.label_values(name)))
            ax.text(0.09, y, label, fontsize=9, va="center")
            ax.text(0.34, y, f"annotated: {n_true} px", fontsize=8.5, va="center")
        else:
            ax.text(0.09, y, label, fontsize=9, va="center", color="0.45", style="italic")
            ax.text(0.34, y, NOT_ANNOTATED.upper(), fontsize=8.5, va="center", color="0.45",
                    fontweight="bold")
            if n_pred:
                pred_text += f"\n{NOT_SCORED}"
        ax.text(0.68, y, pred_text, fontsize=8, va="center",
                color="black" if annotated else "0.35")
    note = (f"{NOT_ANNOTATED.upper()}: the class was not labelled in this crop, so its truth is\n"
            "unknown (not empty) and its prediction is not scored.")
    if hidden:
        names = ", ".join(hidden) if len(hidden) <= 12 else f"{', '.join(hidden[:12])}, ..."
        note += (f"\nNot listed: {len(hidden)} classes {NOT_ANNOTATED} here and not predicted "
                 "on this slice:\n" + textwrap.fill(names, 80))
    ax.text(0.0, len(shown) + 1.0, note, fontsize=8, va="top", color="0.3")
