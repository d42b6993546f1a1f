"""Report figures: PNGs are written, readable, and say what is unscored or uninformative."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import zarr
from matplotlib.figure import Figure
from matplotlib.text import Text

from cellmapseg.classes import CLASS_NAMES
from cellmapseg.config import from_dict
from cellmapseg.data.inventory import CROP_COLUMNS, write_inventory
from cellmapseg.errors import InputError
from cellmapseg.report import figures
from cellmapseg.report.figures import (
    NO_VALIDATION,
    NOT_SCORED,
    examples_figure,
    plot_examples,
    plot_scores,
    plot_training,
    scores_figure,
    training_figure,
)

NEVER_ANNOTATED = "golgi_mem"  # NaN in every validation row / absent from the summary


def texts(fig: Figure) -> str:
    """Every string drawn in the figure (titles, labels, legends, annotations), joined."""
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def assert_png(path: Path, fig_inches: tuple[float, float] | None = None) -> None:
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    if fig_inches is not None:
        expected = (round(fig_inches[1] * figures.DPI), round(fig_inches[0] * figures.DPI))
        assert image.shape[:2] == expected
    assert image[..., :3].std() > 0.05  # not a single colour


def metrics_frame(epochs: int, validate_every: int | None = 2) -> pd.DataFrame:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "step": 10 * e, "train_loss": 2.0 / e, "lr": 1e-2 * 0.3 ** e,
               "seconds": 1.0, "patches_per_s": 5.0, "peak_host_rss_bytes": 1 << 30,
               "peak_gpu_bytes": 0, "val_dice_mean": np.nan}
        row.update({f"val_dice_{c}": np.nan for c in CLASS_NAMES})
        if validate_every and e % validate_every == 0:
            dice = {c: min(1.0, 0.1 * e + 0.01 * i) for i, c in enumerate(CLASS_NAMES)
                    if c != NEVER_ANNOTATED}
            row.update({f"val_dice_{c}": v for c, v in dice.items()})
            # the peak is at epoch 4, not at the end, so "best" is not just "last"
            row["val_dice_mean"] = 0.5 if e == 4 else 0.3
        rows.append(row)
    return pd.DataFrame(rows)


def summary_dict(nuc_skipped: int = 2) -> dict:
    classes: dict = {}
    for i, name in enumerate(CLASS_NAMES[:-1]):
        if name == NEVER_ANNOTATED:
            continue
        classes[name] = {"kind": "semantic", "tp": 10, "fp": 5, "fn": 5,
                         "iou": 0.05 * i, "dice": 0.06 * i, "crops": 2}
    classes["nuc"] = {"kind": "instance", "tp": 0, "fp": 0, "fn": 0, "f1": 1.0,
                      "mean_norm_hausdorff": 1.0, "combined": 1.0, "n_hausdorff": 0,
                      "crops": 2, "skipped_crops": nuc_skipped}
    return {"metric_version": "cellmap-eval@test", "crops": ["a", "b"], "n_crops": 2,
            "classes": classes, "semantic_mean_iou": 0.3, "instance_mean_combined": 1.0,
            "overall": 0.5477}


# ---------------------------------------------------------------- training


def test_training_figure_draws_validated_classes_and_marks_best_epoch() -> None:
    fig = training_figure(metrics_frame(6), "unet")
    ax_val = fig.axes[2]
    labels = ax_val.get_legend_handles_labels()[1]
    assert NEVER_ANNOTATED not in labels  # all-NaN class left out, not drawn as zero
    assert "ecs" in labels and "mean (val_dice_mean)" in labels
    text = texts(fig)
    assert "best epoch 4" in text
    assert f"not drawn: {NEVER_ANNOTATED}" in text
    assert "log scale" in text  # lr spans > 1 decade


def test_plot_training_writes_png_for_a_single_row(tmp_path: Path) -> None:
    out = tmp_path / "fig" / "training.png"
    plot_training(metrics_frame(1, validate_every=1), "unet", out)
    assert_png(out, (11, 12))


def test_training_without_validation_rows_says_no_validation_yet(tmp_path: Path) -> None:
    metrics = metrics_frame(3, validate_every=None)
    assert NO_VALIDATION in texts(training_figure(metrics, "unet"))
    plot_training(metrics, "unet", tmp_path / "t.png")
    assert_png(tmp_path / "t.png")


def test_training_without_val_columns_at_all_says_no_validation_yet() -> None:
    metrics = metrics_frame(2)[["epoch", "step", "train_loss", "lr"]]
    assert NO_VALIDATION in texts(training_figure(metrics, "unet"))


def test_training_missing_column_raises_input_error_naming_it() -> None:
    with pytest.raises(InputError, match="'train_loss' missing"):
        training_figure(metrics_frame(2).drop(columns="train_loss"), "unet")


# ---------------------------------------------------------------- scores


def test_scores_figure_flags_an_instance_class_skipped_by_the_guard() -> None:
    text = texts(scores_figure(summary_dict(nuc_skipped=2), "unet"))
    assert "all 2 crops skipped by the challenge's guard" in text
    assert "score not informative" in text
    assert "WARNING: nuc scored 1.0 only because the guard skipped all its crops" in text
    assert "overall 0.548" in text and "semantic mean IoU 0.300" in text


def test_scores_figure_does_not_flag_the_guard_when_no_crop_was_skipped() -> None:
    text = texts(scores_figure(summary_dict(nuc_skipped=0), "unet"))
    assert "guard" not in text


def test_scores_figure_shows_unannotated_class_as_not_scored_not_as_zero() -> None:
    fig = scores_figure(summary_dict(), "unet")
    ax = fig.axes[0]
    assert "not scored (not annotated in any validation crop)" in texts(fig)
    slot = CLASS_NAMES.index(NEVER_ANNOTATED)
    bars = [p for p in ax.patches if abs(p.get_y() + p.get_height() / 2 - slot) < 0.45
            and p.get_width() >= 0 and p.get_height() < 0.5]
    assert bars == []  # no (zero-width) bar in the unscored class's slot
    assert len(ax.containers) == 2 * 12 + 3  # 12 semantic classes x 2, nuc x 3


def test_plot_scores_writes_png(tmp_path: Path) -> None:
    plot_scores(summary_dict(), "unet", tmp_path / "scores.png")
    assert_png(tmp_path / "scores.png", (11, 11))


def test_scores_missing_metric_key_raises_input_error_naming_class() -> None:
    summary = summary_dict()
    del summary["classes"]["ecs"]["iou"]
    with pytest.raises(InputError, match="class 'ecs' lacks key 'iou'"):
        scores_figure(summary, "unet")


# ---------------------------------------------------------------- examples

SHAPE = (12, 16, 20)
# crop 1 (the second validation crop) leaves er_mem unannotated; its prediction is non-empty
VAL_ANNOTATED = ("0,1,2,3,11,12,13", "0,1,2,3,12,13", "0,2,13")


@pytest.fixture
def examples_inputs(tmp_path: Path, make_dataset: Callable[..., Path]
                    ) -> tuple[Path, pd.DataFrame]:
    """1 training + 3 validation crops, their inventory, and a predictions.zarr for them."""
    crops = {1 + i: {"annotated_classes": a} for i, a in enumerate(VAL_ANNOTATED)}
    datalist = make_dataset(tmp_path / "data", n_train=1, n_val=3, shape=SHAPE, crops=crops)
    inventory = write_inventory(from_dict({"data": {"datalist": str(datalist)}}),
                                tmp_path / "inventory.csv")
    store_path = tmp_path / "predictions.zarr"
    store = zarr.open_group(str(store_path), mode="w", zarr_format=2)
    rng = np.random.default_rng(0)
    for _, row in inventory[inventory["split"] == "validation"].iterrows():
        group = store.create_group(row["crop_id"])
        for name in CLASS_NAMES:
            dtype = "uint32" if name == "nuc" else "uint8"
            arr = group.create_array(name, shape=SHAPE, chunks=(4, 8, 8), dtype=dtype)
            data = rng.integers(0, 2, size=SHAPE)
            arr[:] = data * (np.arange(SHAPE[2]) // 5 + 1) if name == "nuc" else data
            arr.attrs["voxel_size"] = [8.0, 8.0, 8.0]
    return store_path, inventory


def test_plot_examples_returns_validation_crops_in_order_and_respects_n_crops(
        tmp_path: Path, examples_inputs: tuple[Path, pd.DataFrame]) -> None:
    store, inventory = examples_inputs
    validation = list(inventory.loc[inventory["split"] == "validation", "crop"])
    out = tmp_path / "examples.png"
    assert plot_examples(store, inventory, "unet", out, n_crops=2) == validation[:2]
    assert_png(out)
    assert examples_figure(store, inventory, "unet", n_crops=10)[1] == validation


def test_examples_mark_unannotated_classes_in_truth_and_prediction(
        examples_inputs: tuple[Path, pd.DataFrame]) -> None:
    store, inventory = examples_inputs
    fig, shown = examples_figure(store, inventory, "unet", n_crops=3)
    text = texts(fig)
    assert len(shown) == 3
    assert "NOT ANNOTATED" in text
    assert f"px\n{NOT_SCORED}" in text  # table: er_mem predicted where it is not annotated
    for crop in shown:
        assert crop in text  # each row is titled with its crop


def test_examples_missing_class_array_raises_input_error_naming_crop_and_class(
        examples_inputs: tuple[Path, pd.DataFrame]) -> None:
    store, inventory = examples_inputs
    row = inventory[inventory["split"] == "validation"].iloc[0]
    shutil.rmtree(store / row["crop_id"] / "er_lum")
    with pytest.raises(InputError, match=f"{row['crop_id']}/er_lum.*{row['crop']}"):
        examples_figure(store, inventory, "unet", n_crops=1)


def test_examples_missing_store_raises_input_error_naming_it(
        tmp_path: Path, examples_inputs: tuple[Path, pd.DataFrame]) -> None:
    _, inventory = examples_inputs
    with pytest.raises(InputError, match="nowhere.zarr: prediction store not found"):
        examples_figure(tmp_path / "nowhere.zarr", inventory, "unet")


def test_examples_without_validation_crops_returns_no_names(tmp_path: Path) -> None:
    inventory = pd.DataFrame(columns=list(CROP_COLUMNS))
    assert plot_examples(tmp_path / "absent.zarr", inventory, "unet", tmp_path / "e.png") == []
    assert (tmp_path / "e.png").is_file()


def test_best_slice_prefers_more_classes_then_more_foreground() -> None:
    label = np.zeros((4, 5, 5), np.uint8)
    label[0] = 1  # one class filling the slice
    label[1, 0, :3] = (1, 2, 3)  # three classes, little foreground
    label[2, :2, :] = 4
    label[2, 0, :3] = (1, 2, 3)  # three classes, more foreground
    assert figures._best_slice(label) == 2
