"""The cross-model comparison, built from hand-written evaluation and training files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cellmapseg.classes import Ontology
from cellmapseg.config import from_dict
from cellmapseg.errors import InputError
from cellmapseg.evaluate.aggregate import leaderboard, summarise
from cellmapseg.layout import Results
from cellmapseg.report.comparison import (
    LEADERBOARD,
    best_marks,
    build,
    figure_matrix,
    model_files,
    overview_rst,
    to_html,
    to_markdown,
    write_comparison,
)
from cellmapseg.report.console import print_comparison, report_target

DEFAULT: Ontology = from_dict({}).classes  # the spec's 14 atomic classes and 4 groups


def files(results: Path, models: list[str]) -> dict:
    """The comparison's inputs in a results folder laid out like the workflow's."""
    return model_files(Results(results), models)


def semantic(iou: float) -> dict:
    return {"kind": "semantic", "tp": 1, "fp": 0, "fn": 0, "iou": iou,
            "dice": 2 * iou / (1 + iou), "crops": 2}


def instance(f1: float, dist: float, crops: int = 2, skipped: int = 0) -> dict:
    return {"kind": "instance", "tp": 1, "fp": 0, "fn": 0, "f1": f1,
            "mean_norm_hausdorff": dist, "combined": (f1 * dist) ** 0.5, "n_hausdorff": 1,
            "crops": crops, "skipped_crops": skipped}


def write_train(results: Path, model: str, score: float, wall: float = 100.0) -> None:
    train = results / model / "train"
    train.mkdir(parents=True)
    (train / "summary.json").write_text(json.dumps({
        "model": model, "parameters": 1_500_000, "epochs": 4, "steps": 80, "best_epoch": 3,
        "best_val_dice": score, "wall_seconds": wall, "patches_per_s": 2.5,
        "peak_host_rss_bytes": 2**30, "peak_gpu_bytes": 0, "caching_strategy": "B",
        "world_size": 1, "device": "cpu"}))


def write_model(results: Path, model: str, ious: dict[str, float], nuc: dict | None,
                overall: float, wall: float = 100.0, evaluated: bool = True) -> dict | None:
    """A model scored over the default ontology; returns its eval summary."""
    write_train(results, model, overall, wall)
    if not evaluated:
        return None
    classes = {c: semantic(v) for c, v in ious.items()}
    if nuc is not None:
        classes["nuc"] = nuc
    summary = {
        "ontology": DEFAULT.summary(), "classes": classes, "n_crops": 2, "overall": overall,
        "semantic_mean_iou": sum(ious.values()) / len(ious),
        "instance_mean_combined": nuc["combined"] if nuc else 0.0,
        "leaderboard": leaderboard(classes, DEFAULT)}
    (results / model / "eval_summary.json").write_text(json.dumps(summary))
    return summary


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
    assert marks["leaderboard_semantic_mean_iou"] == {"alpha"}


def test_guard_skipped_scores_never_win(results):
    frame = build(files(results, MODELS))
    gamma = frame.set_index("model").loc["gamma"]
    assert gamma["overall"] == 0.9 and gamma["nuc_combined"] == 1.0
    assert "nuc: all 2 crops skipped" in gamma["guard_note"]
    marks = best_marks(frame)
    assert marks["overall"] == {"alpha"} and marks["nuc_combined"] == {"alpha"}
    # nuc is a tested class: the guard's 1.0 lifts the leaderboard's instance mean too
    assert gamma["leaderboard_instance_mean_combined"] > 0
    assert marks["leaderboard_instance_mean_combined"] == {"alpha"}
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
    assert pd.isna(frame.set_index("model").loc["delta", "tested_covered"])
    md = to_markdown(frame, best_marks(frame))
    assert "| ghost (missing) | — |" in md and "| delta (missing) | — |" in md


def test_unscored_class_reads_not_applicable(results):
    frame = build(files(results, ["alpha"]))
    assert pd.isna(frame.loc[0, "iou_mito_mem"])
    assert "| alpha | **0.900** | **0.500** | n/a |" in to_markdown(frame, best_marks(frame))


def test_class_columns_follow_the_default_ontology(results):
    frame = build(files(results, MODELS))
    semantic_ = [n for n in DEFAULT.names if not DEFAULT.is_instance(n)]
    instance_ = [n for n in DEFAULT.names if DEFAULT.is_instance(n)]
    assert instance_ == ["nuc", "mito", "ves", "endo"] and "golgi" in semantic_
    assert [c for c in frame.columns if c.startswith("iou_")] == [f"iou_{c}" for c in semantic_]
    assert [c for c in frame.columns if c.endswith("_combined") and "mean" not in c] == [
        f"{c}_combined" for c in instance_]
    md = to_markdown(frame, best_marks(frame))
    assert "| Model | nuc F1 ↑ | nuc norm. Hausdorff ↑ | nuc combined ↑ | mito F1 ↑ |" in md


def test_leaderboard_columns_are_the_summaries_and_the_coverage_line_shows_once(results):
    frame = build(files(results, MODELS)).set_index("model")
    for model in ("alpha", "beta", "gamma"):
        board = json.loads((results / model / "eval_summary.json").read_text())["leaderboard"]
        for col, key in LEADERBOARD.items():
            assert frame.loc[model, col] == pytest.approx(board[key]), (model, col)
    assert board["n_tested"] == 48 and board["covered"] == 18
    assert frame["tested_covered"].dtype == "Int64" and frame["n_tested"].dtype == "Int64"
    assert frame.loc["alpha", "leaderboard_overall"] != frame.loc["alpha", "overall"]
    frame = frame.reset_index()
    marks = best_marks(frame)
    assert marks["leaderboard_overall"] == {"alpha"}
    md, page = to_markdown(frame, marks), to_html(frame, marks)
    line = "covers 18 of 48 tested classes (30 not predicted score 0)"
    assert board["line"].startswith(line)
    assert md.count(line) == 1 and page.count(line) == 1
    assert md.index(line) < md.index("## Summary")
    assert "| Model | Overall ↑ | Leaderboard ↑ |" in md
    assert "| Tested classes predicted |" in md and "| 18 of 48 |" in md
    cols, labels, _ = figure_matrix(frame)
    assert cols[:2] == ["overall", "leaderboard_overall"] and labels[1] == "leaderboard"
    assert line in overview_rst(frame, marks, _png(results))


def test_csv_has_the_leaderboard_columns_as_integers_and_scores(results):
    out = results / "cmp"
    write_comparison(files(results, MODELS), Results(out).comparison())
    text = (out / "comparison.csv").read_text()
    csv = pd.read_csv(out / "comparison.csv")
    for col in LEADERBOARD:
        assert col in csv.columns
    header = text.splitlines()[0].split(",")
    alpha = text.splitlines()[1].split(",")
    assert alpha[header.index("tested_covered")] == "18"
    assert alpha[header.index("n_tested")] == "48"


def small_ontology() -> Ontology:
    return from_dict({"classes": {
        "atomic": [{"name": "a", "label": 1}, {"name": "b", "label": 2},
                   {"name": "c", "label": 3}],
        "groups": [], "instance": ["c"], "tested": ["a", "b", "c", "d"]}}).classes


def small_summary(ontology: Ontology, scale: float) -> dict:
    rows = pd.DataFrame([
        {"crop": "k1", "class": "a", "kind": "semantic", "tp": int(90 * scale), "fp": 5,
         "fn": 5},
        {"crop": "k1", "class": "b", "kind": "semantic", "tp": int(40 * scale), "fp": 30,
         "fn": 30},
        {"crop": "k1", "class": "c", "kind": "instance", "tp": 3, "fp": 1, "fn": 1,
         "hausdorff_norm_sum": 2.4, "n_hausdorff": 3, "guard": ""},
    ])
    return summarise(rows, ["k1"], ontology)


def test_a_three_class_ontology_gives_exactly_its_class_columns(tmp_path):
    ontology = small_ontology()
    for model, scale in (("m1", 1.0), ("m2", 0.5)):
        write_train(tmp_path, model, 0.5)
        summary = small_summary(ontology, scale)
        (tmp_path / model / "eval_summary.json").write_text(json.dumps(summary))
    frame = build(files(tmp_path, ["m1", "m2"]))
    class_columns = [c for c in frame.columns
                     if c.startswith(("iou_", "dice_", "a_", "b_", "c_"))]
    assert class_columns == ["c_f1", "c_norm_hausdorff", "c_combined", "c_crops",
                             "c_skipped_crops", "iou_a", "iou_b", "dice_a", "dice_b"]
    assert not any("nuc" in c or "ecs" in c for c in frame.columns)
    m1 = frame.set_index("model").loc["m1"]
    assert m1["iou_a"] == pytest.approx(90 / (90 + 5 + 5))
    assert m1["leaderboard_overall"] == pytest.approx(
        small_summary(ontology, 1.0)["leaderboard"]["overall"])
    assert m1["tested_covered"] == 3 and m1["n_tested"] == 4
    marks = best_marks(frame)
    assert marks["iou_a"] == {"m1"}
    md = to_markdown(frame, marks)
    assert "covers 3 of 4 tested classes (1 not predicted score 0)" in md
    assert "| Model | a | b |" in md
    assert "| Model | c F1 ↑ | c norm. Hausdorff ↑ | c combined ↑ |" in md
    write_comparison(files(tmp_path, ["m1", "m2"]), Results(tmp_path / "cmp").comparison())
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_a_guard_skipped_class_not_tested_leaves_the_leaderboard_informative(tmp_path):
    ontology = from_dict({"classes": {
        "atomic": [{"name": "a", "label": 1}, {"name": "c", "label": 2}],
        "groups": [], "instance": ["c"], "tested": ["a"]}}).classes
    rows = pd.DataFrame([
        {"crop": "k1", "class": "a", "kind": "semantic", "tp": 9, "fp": 1, "fn": 0},
        {"crop": "k1", "class": "c", "kind": "instance", "tp": 0, "fp": 0, "fn": 0,
         "hausdorff_norm_sum": 0.0, "n_hausdorff": 0, "guard": "too many instances"}])
    write_train(tmp_path, "m", 0.5)
    (tmp_path / "m" / "eval_summary.json").write_text(json.dumps(
        summarise(rows, ["k1"], ontology)))
    frame = build(files(tmp_path, ["m"]))
    marks = best_marks(frame)
    assert "c: all 1 crops skipped" in frame.loc[0, "guard_note"]
    assert "overall" not in marks and "c_combined" not in marks  # the guard's 1.0
    assert marks["leaderboard_overall"] == {"m"}  # c is not a tested class: no effect there
    md = to_markdown(frame, marks)
    assert "(not a tested class)" in md


def test_without_any_evaluation_the_table_has_the_headline_columns_only(tmp_path):
    write_model(tmp_path, "a", {}, None, 0.3, evaluated=False)
    frame = build(files(tmp_path, ["a", "ghost"]))
    assert not [c for c in frame.columns if c.startswith(("iou_", "dice_"))]
    assert not [c for c in frame.columns if c.endswith("_norm_hausdorff")]
    for col in ("overall", "semantic_mean_iou", "instance_mean_combined", *LEADERBOARD):
        assert col in frame.columns
    md = to_markdown(frame, best_marks(frame))
    assert "| a (missing) | — |" in md and "Per-class IoU" not in md
    out = tmp_path / "cmp"
    write_comparison(files(tmp_path, ["a", "ghost"]), Results(out).comparison())
    assert (out / "comparison.png").stat().st_size > 0


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
    assert "covers 18 of 48 tested classes" in text
    assert text.rstrip().splitlines()[-1].startswith(
        f"HTML report: {Path('out/report.html').resolve()}")
    assert report_target(["snakemake", "--report=r.html"]) == "r.html"
    assert report_target(["snakemake", "all"]) is None


# --- entries of every kind, intervals and leads ------------------------------------------------

def _eval_rows(ious: list[float], cls: str = "ecs", n: int = 100) -> pd.DataFrame:
    """eval.csv rows of one semantic class, one crop per IoU (n truth voxels each)."""
    from cellmapseg.evaluate.score import CSV_COLUMNS, _table

    rows = []
    for i, v in enumerate(ious):
        tp = round(n * v)
        rows.append({**dict.fromkeys(CSV_COLUMNS), "crop": f"c{i}", "crop_id": f"c{i}",
                     "class": cls, "kind": "semantic", "tp": tp, "fp": 0, "fn": n - tp,
                     "guard": ""})
    return _table(rows)


def _entry(results: Path, name: str, ious: list[float], kind: str = "model",
           choices: dict | None = None, seconds: float | None = None):
    """One entry's eval.csv and eval_summary.json (and a training summary for a model)."""
    from cellmapseg.evaluate.score import write_outputs
    from cellmapseg.report.comparison import ModelFiles

    r = Results(results)
    table = _eval_rows(ious)
    r.eval_csv(name).parent.mkdir(parents=True, exist_ok=True)
    write_outputs(table, list(dict.fromkeys(table["crop"])), r.eval_csv(name),
                  r.eval_summary(name), DEFAULT)
    if kind == "model":
        write_train(results, name, 0.5)
    if choices is not None:
        r.choices(name).write_text(json.dumps(choices))
    return ModelFiles(r.train(name).summary if kind == "model" else None, r.eval_summary(name),
                      r.eval_csv(name), r.choices(name) if choices is not None else None,
                      seconds, kind, "" if kind == "model" else "a, b (per class)")


def _spec(resamples: int = 500):
    from cellmapseg.report.comparison import Bootstrap

    return Bootstrap(DEFAULT, resamples, 0.95, 7)


def test_a_lead_held_on_every_crop_holds_and_a_tie_with_a_twin_does_not(tmp_path):
    out = Results(tmp_path / "cmp").comparison()
    better = [0.8, 0.7, 0.9, 0.6, 0.8, 0.7]
    worse = [v - 0.2 for v in better]
    models = {"a": _entry(tmp_path, "a", better), "b": _entry(tmp_path, "b", worse)}
    frame = write_comparison(models, out, _spec())
    leads = pd.read_csv(out["leads"]).set_index("column")
    assert leads.at["iou_ecs", "winner"] == "a" and leads.at["iou_ecs", "runner_up"] == "b"
    assert leads.at["iou_ecs", "holds"] and leads.at["iou_ecs", "diff_lo"] > 0
    row = frame.set_index("model").loc["a"]
    assert row["iou_ecs_lo"] <= row["iou_ecs"] <= row["iou_ecs_hi"]
    assert "| a | **0.750 [" in to_markdown(frame, best_marks(frame))  # no "≈"
    # an identical twin: zero-width difference, no lead, the best value marked
    models["twin"] = _entry(tmp_path, "twin", better)
    frame = write_comparison(models, out, _spec())
    leads = pd.read_csv(out["leads"]).set_index("column")
    assert (leads.at["iou_ecs", "diff_lo"], leads.at["iou_ecs", "diff_hi"]) == (0.0, 0.0)
    assert not leads.at["iou_ecs", "holds"]
    assert "**0.750≈ [" in to_markdown(frame, best_marks(frame))


def test_a_lead_that_swaps_from_crop_to_crop_does_not_hold(tmp_path):
    out = Results(tmp_path / "cmp").comparison()
    models = {"a": _entry(tmp_path, "a", [0.9, 0.1, 0.9, 0.2, 0.8, 0.1]),
              "b": _entry(tmp_path, "b", [0.1, 0.9, 0.2, 0.8, 0.1, 0.85])}
    frame = write_comparison(models, out, _spec())
    leads = pd.read_csv(out["leads"]).set_index("column")
    assert not leads.at["iou_ecs", "holds"] and leads.at["iou_ecs", "diff_lo"] < 0
    md = to_markdown(frame, best_marks(frame))
    assert "≈" in md and "paired bootstrap" in md


def test_variants_and_ensembles_are_rows_with_what_they_are_built_from(tmp_path):
    out = Results(tmp_path / "cmp").comparison()
    choices = {"method": "per_class", "thresholds": "tuned", "final": {"classes": {
        "ecs": {"member": "a", "threshold": 0.4, "tuned": True},
        "pm": {"member": "b", "threshold": 0.5, "tuned": False}}}}
    models = {"a": _entry(tmp_path, "a", [0.5, 0.6], seconds=10.0),
              "e": _entry(tmp_path, "e", [0.7, 0.6], kind="ensemble", choices=choices,
                          seconds=25.0)}
    frame = write_comparison(models, out, _spec()).set_index("model")
    assert frame.at["e", "status"] == "ok" and frame.at["e", "kind"] == "ensemble"
    assert pd.isna(frame.at["e", "parameters"])  # nothing trained
    assert frame.at["e", "choices"] == "ecs: a@0.4; pm: b@0.5 (untuned)"
    assert frame.at["e", "predict_s"] == 25.0
    md = Path(out["md"]).read_text()
    assert "| e | a, b (per class) | ecs: a@0.4; pm: b@0.5 (untuned) |" in md
    assert "| a |  |  |" not in md  # a model has no choices: not a row of that table
    assert "95% interval of a bootstrap over the 2 validation crops (500 draws" in md


def test_interval_columns_are_not_taken_for_classes(tmp_path):
    from cellmapseg.report.comparison import frame_classes

    out = Results(tmp_path / "cmp").comparison()
    frame = write_comparison({"a": _entry(tmp_path, "a", [0.5, 0.6])}, out, _spec(50))
    assert "iou_ecs_lo" in frame.columns
    assert "ecs_lo" not in frame_classes(frame).semantic
    assert "| Model | ecs | pm |" in Path(out["md"]).read_text()
