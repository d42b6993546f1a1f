"""The comparison across models, built from hand-written evaluation and training files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cellmapseg.errors import InputError
from cellmapseg.layout import Results
from cellmapseg.report.comparison import (
    best_marks,
    build,
    model_files,
    overview_rst,
    to_html,
    to_markdown,
    write_comparison,
)
from cellmapseg.report.console import print_comparison, report_target


def files(results: Path, models: list[str]) -> dict:
    """The comparison's inputs in a results folder laid out like the workflow's."""
    return model_files(Results(results), models)


def semantic(iou: float) -> dict:
    return {"kind": "semantic", "iou": iou, "dice": 2 * iou / (1 + iou), "crops": 2}


def instance(f1: float, dist: float, crops: int = 2, skipped: int = 0) -> dict:
    return {"kind": "instance", "f1": f1, "mean_norm_hausdorff": dist,
            "combined": (f1 * dist) ** 0.5, "crops": crops, "skipped_crops": skipped}


def write_model(results: Path, model: str, ious: dict[str, float], nuc: dict | None,
                overall: float, wall: float = 100.0, evaluated: bool = True) -> None:
    train = results / model / "train"
    train.mkdir(parents=True)
    (train / "summary.json").write_text(json.dumps({
        "model": model, "parameters": 1_500_000, "epochs": 4, "steps": 80, "best_epoch": 3,
        "best_val_dice": overall, "wall_seconds": wall, "patches_per_s": 2.5,
        "peak_host_rss_bytes": 2**30, "peak_gpu_bytes": 0, "caching_strategy": "B",
        "world_size": 1, "device": "cpu"}))
    if not evaluated:
        return
    classes = {c: semantic(v) for c, v in ious.items()}
    if nuc is not None:
        classes["nuc"] = nuc
    (results / model / "eval_summary.json").write_text(json.dumps({
        "classes": classes, "n_crops": 2, "overall": overall,
        "semantic_mean_iou": sum(ious.values()) / len(ious),
        "instance_mean_combined": nuc["combined"] if nuc else 0.0}))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    write_model(tmp_path, "alpha", {"ecs": 0.9, "pm": 0.5}, instance(0.6, 0.8), 0.5, wall=300)
    write_model(tmp_path, "beta", {"ecs": 0.7, "pm": 0.6}, instance(0.4, 0.9), 0.4, wall=50)
    # every nuc crop skipped by the challenge's guard: nuc = 1.0 and a higher overall
    write_model(tmp_path, "gamma", {"ecs": 0.2, "pm": 0.1}, instance(1.0, 1.0, 2, 2), 0.9)
    write_model(tmp_path, "delta", {"ecs": 0.1, "pm": 0.1}, None, 0.0, evaluated=False)
    return tmp_path


MODELS = ["alpha", "beta", "gamma", "delta", "ghost"]


def test_best_value_of_each_score_column_is_marked(results):
    marks = best_marks(build(files(results, MODELS)))
    assert marks["iou_ecs"] == {"alpha"} and marks["iou_pm"] == {"beta"}
    assert marks["dice_ecs"] == {"alpha"} and marks["dice_pm"] == {"beta"}
    assert marks["nuc_f1"] == {"alpha"} and marks["nuc_norm_hausdorff"] == {"beta"}
    assert marks["semantic_mean_iou"] == {"alpha"}


def test_guard_skipped_scores_never_win(results):
    frame = build(files(results, MODELS))
    gamma = frame.set_index("model").loc["gamma"]
    assert gamma["overall"] == 0.9 and gamma["nuc_combined"] == 1.0
    assert "nuc: all 2 crops skipped" in gamma["guard_note"]
    marks = best_marks(frame)
    assert marks["overall"] == {"alpha"} and marks["nuc_combined"] == {"alpha"}
    md = to_markdown(frame, marks)
    assert "| gamma | 0.900† |" in md and "| alpha | **0.500** |" in md
    assert "guard skipped every crop of the class" in md


def test_ties_mark_every_holder(tmp_path):
    write_model(tmp_path, "a", {"ecs": 0.5}, None, 0.3)
    write_model(tmp_path, "b", {"ecs": 0.5}, None, 0.2)
    assert best_marks(build(files(tmp_path, ["a", "b"])))["iou_ecs"] == {"a", "b"}


def test_missing_models_are_shown_not_dropped(results):
    frame = build(files(results, MODELS))
    assert list(frame["model"]) == MODELS
    status = frame.set_index("model")["status"]
    assert status["alpha"] == "ok"
    assert status["delta"] == f"missing: {results / 'delta' / 'eval_summary.json'}"
    assert "train/summary.json" in status["ghost"] and "eval_summary.json" in status["ghost"]
    # a model that trained but was not scored keeps its training figures
    assert frame.set_index("model").loc["delta", "epochs"] == 4
    md = to_markdown(frame, best_marks(frame))
    assert "| ghost (missing) | — |" in md and "| delta (missing) | — |" in md


def test_unscored_class_reads_not_applicable(results):
    frame = build(files(results, ["alpha"]))
    assert pd.isna(frame.loc[0, "iou_mito_mem"])
    assert "| alpha | **0.900** | **0.500** | n/a |" in to_markdown(frame, best_marks(frame))


def test_stage_writes_every_file_and_a_figure(results):
    out = results / "cmp"
    write_comparison(files(results, MODELS), Results(out).comparison())
    for name in ("comparison.csv", "comparison.md", "comparison.html", "comparison.png",
                 "comparison.rst"):
        assert (out / name).stat().st_size > 0, name
    csv = pd.read_csv(out / "comparison.csv")
    assert list(csv["model"]) == MODELS and "iou_ecs" in csv and "dice_pm" in csv
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rst = (out / "comparison.rst").read_text()
    assert rst.startswith(".. raw:: html") and "data:image/png;base64," in rst


def test_names_are_escaped_in_html(tmp_path):
    name = '<script>alert("x")</script>'
    write_model(tmp_path, name, {"ecs": 0.5}, None, 0.3)
    frame = build(files(tmp_path, [name]))
    page = to_html(frame, best_marks(frame))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<script>" not in overview_rst(frame, {}, _png(tmp_path))


def _png(folder: Path) -> Path:
    path = folder / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    return path


def test_corrupt_summary_names_the_file(results):
    (results / "alpha" / "eval_summary.json").write_text("{not json")
    with pytest.raises(InputError, match=r"alpha/eval_summary.json: not valid JSON"):
        build(files(results, ["alpha"]))


def test_no_models_is_an_error(tmp_path):
    with pytest.raises(InputError, match="no models"):
        build(files(tmp_path, []))


def test_console_prints_table_and_report_path(results, capsys, tmp_path):
    write_comparison(files(results, ["alpha"]), Results(results).comparison())
    print_comparison(results / "comparison.md", ["snakemake", "--report", "out/report.html"])
    text = capsys.readouterr().out
    assert "# Model comparison" in text and "| alpha |" in text
    assert text.rstrip().splitlines()[-1].startswith(
        f"HTML report: {Path('out/report.html').resolve()}")
    assert report_target(["snakemake", "--report=r.html"]) == "r.html"
    assert report_target(["snakemake", "all"]) is None
