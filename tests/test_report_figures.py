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

from cellmapseg.classes import Ontology
from cellmapseg.config import from_dict
from cellmapseg.data.inventory import CROP_COLUMNS, write_inventory
from cellmapseg.errors import InputError
from cellmapseg.evaluate.aggregate import summarise
from cellmapseg.report import figures
from cellmapseg.report.figures import (
    NO_VALIDATION,
    NOT_SCORED,
    class_colours,
    examples_figure,
    plot_examples,
    plot_scores,
    plot_training,
    scores_figure,
    training_figure,
)

DEFAULT: Ontology = from_dict({}).classes  # the spec's 14 atomic classes and 4 groups
ATOMIC = DEFAULT.atomic
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


def metrics_frame(epochs: int, validate_every: int | None = 2,
                  atomic: tuple[str, ...] = ATOMIC) -> pd.DataFrame:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "step": 10 * e, "train_loss": 2.0 / e, "lr": 1e-2 * 0.3 ** e,
               "seconds": 1.0, "patches_per_s": 5.0, "peak_host_rss_bytes": 1 << 30,
               "peak_gpu_bytes": 0, "val_dice_mean": np.nan}
        row.update({f"val_dice_{c}": np.nan for c in atomic})
        if validate_every and e % validate_every == 0:
            dice = {c: min(1.0, 0.1 * e + 0.01 * i) for i, c in enumerate(atomic)
                    if c != NEVER_ANNOTATED}
            row.update({f"val_dice_{c}": v for c, v in dice.items()})
            # the peak is at epoch 4, not at the end, so "best" is not just "last"
            row["val_dice_mean"] = 0.5 if e == 4 else 0.3
        rows.append(row)
    return pd.DataFrame(rows)


def summary_dict(nuc_skipped: int = 2) -> dict:
    """A hand-written eval_summary.json over the default ontology: every atomic class but
    NEVER_ANNOTATED and nuc semantic, nuc an instance class, the mito group scored."""
    classes: dict = {}
    for i, name in enumerate(ATOMIC[:-1]):
        if name == NEVER_ANNOTATED:
            continue
        classes[name] = {"kind": "semantic", "tp": 10, "fp": 5, "fn": 5,
                         "iou": 0.05 * i, "dice": 0.06 * i, "crops": 2}
    classes["nuc"] = {"kind": "instance", "tp": 0, "fp": 0, "fn": 0, "f1": 1.0,
                      "mean_norm_hausdorff": 1.0, "combined": 1.0, "n_hausdorff": 0,
                      "crops": 2, "skipped_crops": nuc_skipped}
    classes["mito"] = {"kind": "instance", "tp": 3, "fp": 1, "fn": 1, "f1": 0.75,
                       "mean_norm_hausdorff": 0.8, "combined": 0.775, "n_hausdorff": 4,
                       "crops": 2, "skipped_crops": 0}
    return {"metric_version": "cellmap-eval@test", "crops": ["a", "b"], "n_crops": 2,
            "ontology": DEFAULT.summary(), "classes": classes, "semantic_mean_iou": 0.3,
            "instance_mean_combined": 1.0, "overall": 0.5477,
            "leaderboard": {"n_tested": 48, "covered": 18, "overall": 0.1234,
                            "line": "covers 18 of 48 tested classes (30 not predicted score 0)"}}


def ontology_of(n_atomic: int, groups: dict[str, list[str]] | None = None,
                instance: tuple[str, ...] = ()) -> Ontology:
    """An ontology of atomic classes k0..k{n-1} (label values 1..n) and `groups`."""
    atomic = [f"k{i}" for i in range(n_atomic)]
    groups = groups or {}
    return from_dict({"classes": {
        "atomic": [{"name": n, "label": i + 1} for i, n in enumerate(atomic)],
        "groups": [{"name": g, "members": m} for g, m in groups.items()],
        "instance": list(instance), "tested": [*atomic, *groups, "untested_x"]}}).classes


def ontology_summary(ontology: Ontology, skip: tuple[str, ...] = ()) -> dict:
    """eval_summary.json of `ontology` through the real summarise: every class scored on one
    crop but `skip`."""
    rows = []
    for i, name in enumerate(ontology.names):
        if name in skip:
            continue
        row = {"crop": "k", "class": name, "tp": 10 + i, "fp": 3, "fn": 2}
        if ontology.is_instance(name):
            row.update(kind="instance", hausdorff_norm_sum=2.5, n_hausdorff=3, guard="")
        else:
            row.update(kind="semantic")
        rows.append(row)
    return summarise(pd.DataFrame(rows), ["k"], ontology)


THREE = ontology_of(3, instance=("k2",))  # a, b semantic; c an instance class
# 30 atomic classes and 5 groups (35 classes), two of them instance classes
LARGE = ontology_of(30, {f"g{j}": [f"k{3 * j}", f"k{3 * j + 1}"] for j in range(5)},
                    instance=("k5", "g1"))


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
    assert "leaderboard 0.123 over the challenge's 48 tested classes: covers 18 of 48" in \
        text.replace("\n", " ")


def test_scores_figure_does_not_flag_the_guard_when_no_crop_was_skipped() -> None:
    text = texts(scores_figure(summary_dict(nuc_skipped=0), "unet"))
    assert "guard" not in text


def test_scores_figure_shows_unannotated_class_as_not_scored_not_as_zero() -> None:
    fig = scores_figure(summary_dict(), "unet")
    ax = fig.axes[0]
    assert "not scored (not annotated in any validation crop)" in texts(fig)
    slot = DEFAULT.names.index(NEVER_ANNOTATED)
    bars = [p for p in ax.patches if abs(p.get_y() + p.get_height() / 2 - slot) < 0.45
            and p.get_width() >= 0 and p.get_height() < 0.5]
    assert bars == []  # no (zero-width) bar in the unscored class's slot
    assert len(ax.containers) == 2 * 12 + 3 + 3  # 12 semantic classes x 2, nuc and mito x 3


def test_scores_figure_shows_every_class_groups_last_and_marked() -> None:
    fig = scores_figure(summary_dict(), "unet")
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(ticks) == len(DEFAULT.names) == 18
    assert [t.split("\n")[0].split(" [")[0] for t in ticks] == list(DEFAULT.names)
    assert ticks[DEFAULT.names.index("mito")] == "mito [group of 3]\n(instance, 2 crops)"
    assert ticks[DEFAULT.names.index("golgi")] == "golgi [group of 2]\n(semantic, 0 crops)"
    assert ticks[DEFAULT.names.index("nuc")] == "nuc\n(instance, 2 crops)"
    assert figures.GROUPS_NOTE in texts(fig)


def test_plot_scores_writes_png(tmp_path: Path) -> None:
    plot_scores(summary_dict(), "unet", tmp_path / "scores.png")
    assert_png(tmp_path / "scores.png", (11, figures.scores_height(18)))


@pytest.mark.parametrize("ontology", [THREE, LARGE], ids=["3 classes", "35 classes"])
def test_scores_and_training_figures_of_other_ontologies(tmp_path: Path,
                                                         ontology: Ontology) -> None:
    summary = ontology_summary(ontology, skip=(ontology.names[1],))
    fig = scores_figure(summary, "unet")
    ticks = [t.get_text().split("\n")[0].split(" [")[0] for t in fig.axes[0].get_yticklabels()]
    assert ticks == list(ontology.names)
    assert "ecs" not in texts(fig)
    plot_scores(summary, "unet", tmp_path / "scores.png")
    assert_png(tmp_path / "scores.png", (11, figures.scores_height(len(ontology.names))))
    metrics = metrics_frame(4, atomic=ontology.atomic)
    labels = training_figure(metrics, "unet").axes[2].get_legend_handles_labels()[1]
    assert labels == [*ontology.atomic, "mean (val_dice_mean)"]
    plot_training(metrics, "unet", tmp_path / "training.png")
    assert_png(tmp_path / "training.png", (11, 12))


def test_scores_summary_with_a_class_outside_its_ontology_is_an_input_error() -> None:
    summary = summary_dict()
    summary["classes"]["lyso"] = summary["classes"]["ecs"]
    with pytest.raises(InputError, match="unknown class 'lyso'"):
        scores_figure(summary, "unet")


def test_class_colours_are_distinct_and_keep_the_spec_colours() -> None:
    colours = class_colours(LARGE.atomic)
    assert len(set(colours.values())) == len(LARGE.atomic)
    assert class_colours(ATOMIC) == {n: figures.CLASS_COLOURS[n] for n in ATOMIC}
    big = class_colours([f"c{i}" for i in range(80)])
    assert len(set(big.values())) == 80
    assert not set(list(big.values())[:38]) & set(figures.CLASS_COLOURS.values())


def test_scores_missing_metric_key_raises_input_error_naming_class() -> None:
    summary = summary_dict()
    del summary["classes"]["ecs"]["iou"]
    with pytest.raises(InputError, match="class 'ecs' lacks key 'iou'"):
        scores_figure(summary, "unet")


# ---------------------------------------------------------------- examples

SHAPE = (12, 16, 20)
# crop 1 (the second validation crop) leaves er_mem unannotated; its prediction is non-empty
VAL_ANNOTATED = ("0,1,2,3,11,12,13", "0,1,2,3,12,13", "0,2,13")


def write_store(store_path: Path, inventory: pd.DataFrame, ontology: Ontology,
                shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> None:
    """A predictions.zarr of the validation crops: the store's `classes` attribute, one array
    per class of the ontology (uint32 ids for instance classes, 0/1 otherwise)."""
    store = zarr.open_group(str(store_path), mode="w", zarr_format=2)
    store.attrs["classes"] = ontology.summary()
    rng = np.random.default_rng(seed)
    for _, row in inventory[inventory["split"] == "validation"].iterrows():
        group = store.create_group(row["crop_id"])
        for name in ontology.names:
            inst = ontology.is_instance(name)
            arr = group.create_array(name, shape=shape, chunks=(4, 8, 8),
                                     dtype="uint32" if inst else "uint8")
            data = rng.integers(0, 2, size=shape)
            arr[:] = data * (np.arange(shape[2]) // 5 + 1) if inst else data
            arr.attrs["voxel_size"] = [8.0, 8.0, 8.0]


@pytest.fixture
def examples_inputs(tmp_path: Path, make_dataset: Callable[..., Path]
                    ) -> tuple[Path, pd.DataFrame]:
    """1 training + 3 validation crops, their inventory, and a predictions.zarr for them."""
    crops = {1 + i: {"annotated_classes": a} for i, a in enumerate(VAL_ANNOTATED)}
    datalist = make_dataset(tmp_path / "data", n_train=1, n_val=3, shape=SHAPE, crops=crops)
    inventory = write_inventory(from_dict({"data": {"datalist": str(datalist)}}),
                                tmp_path / "inventory.csv")
    store_path = tmp_path / "predictions.zarr"
    write_store(store_path, inventory, DEFAULT)
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


def test_examples_table_lists_groups_with_their_truth_and_instances(
        examples_inputs: tuple[Path, pd.DataFrame]) -> None:
    store, inventory = examples_inputs
    fig, _ = examples_figure(store, inventory, "unet", n_crops=1)
    text = texts(fig)
    # crop 0 annotates mito_mem, mito_lum, mito_ribo (0, 1, 2 are ecs, pm, mito_mem...):
    # VAL_ANNOTATED[0] = ecs, pm, mito_mem, mito_lum, er_mem, er_lum, nuc -> no whole group
    assert "mito (group)" in text and "golgi (group)" in text
    assert "inst." in text  # instance counts of nuc and of the instance groups
    assert "label value = channel + 1" in text  # no label values given


def examples_of(tmp_path: Path, make_dataset: Callable[..., Path], ontology: Ontology,
                annotated: tuple[str, ...], values: dict[str, int] | None = None
                ) -> tuple[Path, pd.DataFrame]:
    """Validation crops (one per `annotated` string) labelled with `ontology`'s label values
    (or `values`), their inventory under it, and a predictions store of its classes."""
    rng = np.random.default_rng(1)
    labels = values or dict(zip(ontology.atomic, ontology.labels, strict=True))
    crops = {}
    for i, text in enumerate((annotated[0], *annotated)):  # crop 0: the training crop
        channels = [int(c) for c in text.split(",") if c]
        pool = np.array([0, *(labels[ontology.atomic[c]] for c in channels)], np.uint8)
        crops[i] = {"annotated_classes": text,
                    "label": pool[rng.integers(0, len(pool), size=SHAPE)]}
    datalist = make_dataset(tmp_path / "data", n_train=1, n_val=len(annotated), shape=SHAPE,
                            crops=crops, num_classes=ontology.num_channels)
    section = {"atomic": [{"name": n, "label": labels[n]} for n in ontology.atomic],
               "groups": [{"name": g, "members": list(m)} for g, m in ontology.groups],
               "instance": sorted(ontology.instance), "tested": list(ontology.tested)}
    inventory = write_inventory(
        from_dict({"data": {"datalist": str(datalist)}, "classes": section}),
        tmp_path / "inventory.csv")
    store = tmp_path / "predictions.zarr"
    write_store(store, inventory, ontology)
    return store, inventory


@pytest.mark.parametrize("ontology", [THREE, LARGE], ids=["3 classes", "35 classes"])
def test_examples_of_other_ontologies_render(tmp_path: Path, make_dataset: Callable[..., Path],
                                             ontology: Ontology) -> None:
    n = ontology.num_channels
    annotated = (",".join(str(c) for c in range(n)), ",".join(str(c) for c in range(0, n, 2)))
    store, inventory = examples_of(tmp_path, make_dataset, ontology, annotated)
    out = tmp_path / "examples.png"
    assert len(plot_examples(store, inventory, "unet", out)) == 2
    assert_png(out)
    text = texts(examples_figure(store, inventory, "unet")[0])
    for name in ontology.atomic:
        assert name in text  # every class predicted on the slice is listed
    assert "nuc" not in text and "ecs" not in text


def test_examples_list_only_the_classes_annotated_or_predicted(
        tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    store, inventory = examples_of(tmp_path, make_dataset, LARGE, ("0,1,2",))
    root = zarr.open_group(str(store), mode="r+")
    crop_id = inventory.loc[inventory["split"] == "validation", "crop_id"].iloc[0]
    for name in LARGE.names[3:]:
        root[crop_id][name][:] = 0  # nothing predicted beyond the three annotated classes
    text = texts(examples_figure(store, inventory, "unet")[0])
    assert "k0" in text and "k2" in text and "g0 (group)" in text  # g0 = k0 | k1: annotated
    assert f"Not listed: {len(LARGE.names) - 4} classes" in text and "k29" not in text


def test_examples_use_the_given_label_values(tmp_path: Path,
                                             make_dataset: Callable[..., Path]) -> None:
    values = {"k0": 40, "k1": 7, "k2": 200}
    store, inventory = examples_of(tmp_path, make_dataset, THREE, ("0,1,2",), values)
    fig, _ = examples_figure(store, inventory, "unet", labels=values)
    text = texts(fig)
    assert "label value = channel + 1" not in text
    counts = [t for t in text.splitlines() if t.startswith("annotated: ")]
    assert len(counts) == 3 and all(t != "annotated: 0 px" for t in counts)
    # without them the convention finds none of these values: every truth count is 0
    text = texts(examples_figure(store, inventory, "unet")[0])
    assert [t for t in text.splitlines() if t.startswith("annotated: ")] == \
        ["annotated: 0 px"] * 3


def test_examples_store_without_classes_attribute_is_an_input_error(
        examples_inputs: tuple[Path, pd.DataFrame]) -> None:
    store, inventory = examples_inputs
    root = zarr.open_group(str(store), mode="r+")
    del root.attrs["classes"]
    with pytest.raises(InputError, match="root attribute 'classes' missing"):
        examples_figure(store, inventory, "unet", n_crops=1)


def test_config_labels_reads_a_resolved_config(tmp_path: Path) -> None:
    from cellmapseg.config import write_resolved

    write_resolved(from_dict({}), tmp_path / "config.yaml")
    assert figures.config_labels(tmp_path / "config.yaml") == {
        n: i + 1 for i, n in enumerate(ATOMIC)}
    assert figures.config_labels(tmp_path / "absent.yaml") is None


def test_examples_hatch_the_black_padding_of_a_crop(tmp_path: Path,
                                                   make_dataset: Callable[..., Path]) -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(1, 255, SHAPE).astype(np.float32)
    image[:, :, :6] = 0  # black planes at one face of the first validation crop
    crops = {1: {"image": image, "annotated_classes": VAL_ANNOTATED[0]}}
    datalist = make_dataset(tmp_path / "data", n_train=1, n_val=2, shape=SHAPE, crops=crops)
    inventory = write_inventory(from_dict({"data": {"datalist": str(datalist)}}),
                                tmp_path / "inventory.csv")
    write_store(tmp_path / "p.zarr", inventory, DEFAULT)
    fig, _ = examples_figure(tmp_path / "p.zarr", inventory, "unet", n_crops=2)
    assert texts(fig).count("hatched: black padding") == 1  # the padded crop only
    hatched = fig.findobj(lambda o: getattr(o, "hatches", None) == ["///"])  # ContourSets
    assert len(hatched) == 3  # image, truth and the scored prediction
