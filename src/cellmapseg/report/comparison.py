"""The cross-model comparison: one row per entry (results/comparison.csv, .md, .html, .png): each
trained model, each variant of one (test-time augmentation, tuned thresholds) and each
ensemble, in config order.

The class columns come from the ontology the models were scored over (eval_summary.json's
`ontology`; every model of one run shares it): IoU and Dice of each semantic class it predicts,
F1, normalised Hausdorff and combined score of each instance class it predicts, atomic classes
first, then groups. Beside the scores over the classes scored, the leaderboard's view: the score
as the challenge computes it over its tested classes (a tested class not predicted scores 0), and
how many of them the ontology covers.

Uncertainty: with the entries' eval.csv, every score column gets a bootstrap interval over the
validation crops (`{column}_lo`, `{column}_hi`; evaluate.bootstrap, the same draws for every
entry), and the winner of each column is compared with its runner-up in a paired bootstrap
(comparison_leads.csv); a lead whose interval of the difference reaches 0 is marked "≈".

A model whose evaluation is missing stays in the table as `missing`, naming the file it lacks.
Scores that come only from crops the challenge's instance-count guard skipped (a class whose every
crop was skipped scores 1.0) are flagged with a dagger and never win a column: the guard's 1.0
says nothing about the model.
"""

from __future__ import annotations

import base64
import html
import json
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cellmapseg.atomic import atomic_path, write_text
from cellmapseg.classes import Ontology
from cellmapseg.errors import InputError
from cellmapseg.evaluate.bootstrap import (
    column_scores,
    intervals,
    paired_difference,
    resample_counts,
)
from cellmapseg.evaluate.score import read_table
from cellmapseg.layout import Results

INSTANCE_METRICS = ("f1", "norm_hausdorff", "combined")
HEADLINE = ("overall", "semantic_mean_iou", "instance_mean_combined")
# The leaderboard's view (eval_summary.json `leaderboard`): column -> key there.
LEADERBOARD = {"leaderboard_overall": "overall",
               "leaderboard_semantic_mean_iou": "semantic_mean_iou",
               "leaderboard_instance_mean_combined": "instance_mean_combined",
               "tested_covered": "covered", "n_tested": "n_tested"}
LEADERBOARD_SCORES = ("leaderboard_overall", "leaderboard_semantic_mean_iou",
                      "leaderboard_instance_mean_combined")
COVERAGE = "leaderboard_coverage"  # the summary's one-line coverage sentence
TRAIN_KEYS = ("parameters", "epochs", "steps", "best_epoch", "best_val_dice", "patches_per_s",
              "caching_strategy", "world_size", "device")
COST_COLUMNS = ("parameters", "epochs", "steps", "best_epoch", "best_val_dice", "train_wall_s",
                "patches_per_s", "peak_host_rss_gib", "peak_gpu_gib", "caching_strategy",
                "world_size", "device", "predict_s")
ENTRY_COLUMNS = ("kind", "built_from", "choices")
NOT_HELD = "≈"  # marks a best value whose lead over the runner-up does not hold
LEAD_COLUMNS = ("column", "winner", "runner_up", "winner_value", "runner_up_value",
                "diff_lo", "diff_hi", "p_greater", "holds")
INT_COLUMNS = ("epochs", "steps", "best_epoch", "world_size", "tested_covered", "n_tested")
DAGGER = "†"
NOT_TESTED = " (not a tested class)"  # ends a guard note of a class the leaderboard leaves out


@dataclass(frozen=True)
class Classes:
    """The class columns of a comparison: the predicted classes, in ontology order."""

    semantic: tuple[str, ...] = ()
    instance: tuple[str, ...] = ()

    @property
    def instance_columns(self) -> tuple[str, ...]:
        return tuple(f"{c}_{m}" for c in self.instance for m in INSTANCE_METRICS)

    @property
    def iou_columns(self) -> tuple[str, ...]:
        return tuple(f"iou_{c}" for c in self.semantic)

    @property
    def dice_columns(self) -> tuple[str, ...]:
        return tuple(f"dice_{c}" for c in self.semantic)


def classes_of(summaries: Iterable[Mapping[str, Any]]) -> Classes:
    """The class columns of the first summary recording an ontology (its atomic classes, then
    its groups; instance or semantic as it says); from a summary without one (written before
    the ontology was recorded), its scored classes and their kinds. No summary: no columns."""
    summaries = list(summaries)
    for summary in summaries:
        onto = summary.get("ontology")
        if isinstance(onto, Mapping):
            names = [*onto.get("atomic", []), *onto.get("groups", {})]
            instance = set(onto.get("instance", []))
            return Classes(tuple(n for n in names if n not in instance),
                           tuple(n for n in names if n in instance))
    kinds: dict[str, str] = {}
    for summary in summaries:
        for name, entry in (summary.get("classes") or {}).items():
            kinds.setdefault(name, entry.get("kind", "semantic"))
    return Classes(tuple(n for n, k in kinds.items() if k != "instance"),
                   tuple(n for n, k in kinds.items() if k == "instance"))


def frame_classes(frame: pd.DataFrame) -> Classes:
    """The class columns `build` gave `frame`."""
    cols = [c for c in frame.columns if not c.endswith(("_lo", "_hi"))]  # not intervals
    return Classes(tuple(c[len("iou_"):] for c in cols if c.startswith("iou_")),
                   tuple(c[:-len("_norm_hausdorff")] for c in cols
                         if c.endswith("_norm_hausdorff")))


def score_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    """Every score column of `frame` (higher is better for each; the best of each is marked)."""
    k = frame_classes(frame)
    return (*HEADLINE, *LEADERBOARD_SCORES, *k.instance_columns, *k.iou_columns,
            *k.dice_columns, "best_val_dice")


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc


def _eval_columns(summary: dict[str, Any], path: Path, k: Classes) -> dict[str, Any]:
    try:
        classes = summary["classes"]
        row: dict[str, Any] = {c: summary[c] for c in HEADLINE}
    except KeyError as exc:
        raise InputError(f"{path}: missing key {exc.args[0]!r}") from exc
    board = summary.get("leaderboard")
    if isinstance(board, Mapping):
        row.update({col: board.get(key) for col, key in LEADERBOARD.items()})
        row[COVERAGE] = board.get("line")
        tested = set(board.get("tested", ()))
    else:
        tested = set()
    row["eval_crops"] = summary.get("n_crops")
    inflated = []
    for c in k.instance:
        s = classes.get(c, {})
        row[f"{c}_f1"] = s.get("f1")
        row[f"{c}_norm_hausdorff"] = s.get("mean_norm_hausdorff")
        row[f"{c}_combined"] = s.get("combined")
        row[f"{c}_crops"] = s.get("crops", 0)
        row[f"{c}_skipped_crops"] = s.get("skipped_crops", 0)
        if s and s.get("crops", 0) > 0 and s.get("skipped_crops", 0) == s["crops"]:
            inflated.append(f"{c}: all {s['crops']} crops skipped by the challenge's guard"
                            + ("" if c in tested else NOT_TESTED))
    for c in k.semantic:
        row[f"iou_{c}"] = classes.get(c, {}).get("iou")
        row[f"dice_{c}"] = classes.get(c, {}).get("dice")
    row["guard_note"] = "; ".join(inflated)
    return row


def _train_columns(summary: dict[str, Any]) -> dict[str, Any]:
    row = {k: summary.get(k) for k in TRAIN_KEYS}
    row["train_wall_s"] = summary.get("wall_seconds")
    row["peak_host_rss_gib"] = summary.get("peak_host_rss_bytes", 0) / 2**30
    row["peak_gpu_gib"] = summary.get("peak_gpu_bytes", 0) / 2**30
    return row


@dataclass(frozen=True)
class ModelFiles:
    """What the comparison reads of one entry: its training summary (None for a variant or an
    ensemble, which train nothing), its evaluation, and optionally its eval.csv (intervals),
    its choices (thresholds.json of a tuned variant or ensemble), its prediction time (s, over
    the validation crops, members' networks included), its kind and what it is built from."""

    train_summary: Path | None
    eval_summary: Path
    eval_csv: Path | None = None
    choices: Path | None = None
    predict_s: float | None = None
    kind: str = "model"
    built_from: str = ""


def model_files(results: Results, models: Iterable[str]) -> dict[str, ModelFiles]:
    """The files of `models` in a results folder laid out as the workflow lays it out."""
    return {m: ModelFiles(results.train(m).summary, results.eval_summary(m)) for m in models}


@dataclass(frozen=True)
class _Read:
    files: ModelFiles
    train: dict[str, Any] | None
    evaluation: dict[str, Any] | None


def _read(files: ModelFiles) -> _Read:
    train = None if files.train_summary is None else _read_json(Path(files.train_summary))
    return _Read(files, train, _read_json(Path(files.eval_summary)))


def choice_text(choices: Mapping[str, Any] | None) -> str:
    """The final per-class choices of a derived entry, compactly: `class: member@threshold`
    (member only for a per-class ensemble, threshold only when tuned)."""
    if not choices:
        return ""
    per_class, tuned = choices.get("method") == "per_class", choices.get("thresholds") == "tuned"
    parts = []
    for name, c in choices["final"]["classes"].items():
        text = (c["member"] if per_class else "") + (f"@{c['threshold']:g}" if tuned else "")
        parts.append(f"{name}: {text}" + ("" if c.get("tuned", True) else " (untuned)"))
    return "; ".join(parts)


def model_row(model: str, files: ModelFiles | _Read, k: Classes | None = None
              ) -> dict[str, Any]:
    """One model's row (class columns `k`, default: its own summary's); `status` says `ok` or
    which file is missing."""
    read = files if isinstance(files, _Read) else _read(files)
    f = read.files
    eval_path = Path(f.eval_summary)
    row: dict[str, Any] = {"model": model, "kind": f.kind, "built_from": f.built_from}
    if read.train is not None:
        row.update(_train_columns(read.train))
    if read.evaluation is not None:
        k = k if k is not None else classes_of([read.evaluation])
        row.update(_eval_columns(read.evaluation, eval_path, k))
    row["predict_s"] = f.predict_s
    row["choices"] = choice_text(_read_json(Path(f.choices)) if f.choices else None)
    wanted = [(eval_path, read.evaluation)]
    if f.train_summary is not None:
        wanted.insert(0, (Path(f.train_summary), read.train))
    missing = [str(p) for p, d in wanted if d is None]
    row["status"] = "missing: " + ", ".join(missing) if missing else "ok"
    return row


def columns(k: Classes) -> list[str]:
    """The comparison's columns, in order, for class columns `k`."""
    return ["model", "status", *ENTRY_COLUMNS[:2], *HEADLINE, *LEADERBOARD,
            *k.instance_columns,
            *(f"{c}_{s}" for c in k.instance for s in ("crops", "skipped_crops")),
            "guard_note", *k.iou_columns, *k.dice_columns, *COST_COLUMNS, "eval_crops",
            COVERAGE, ENTRY_COLUMNS[2]]


def build(models: Mapping[str, ModelFiles]) -> pd.DataFrame:
    """The comparison frame, one row per model in the given order (missing ones included); the
    class columns are those of the models' ontology (none when no model has an evaluation)."""
    if not models:
        raise InputError("comparison: no models given (config key 'models' is empty)")
    read = {m: _read(files) for m, files in models.items()}
    k = classes_of(r.evaluation for r in read.values() if r.evaluation is not None)
    rows = [model_row(m, r, k) for m, r in read.items()]
    frame = pd.DataFrame(rows).reindex(columns=columns(k))
    for col in ("tested_covered", "n_tested"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    for col in ("guard_note", COVERAGE, *ENTRY_COLUMNS):  # text, even when all are empty
        frame[col] = frame[col].astype(object)
    return frame


def _noted(note: str) -> list[str]:
    """The guard note's items, one per class the guard skipped every crop of."""
    return [item for item in note.split("; ") if item]


def inflated(frame: pd.DataFrame, model: str, column: str) -> bool:
    """Whether `column` of `model` rests on a class every crop of which the guard skipped."""
    note = frame.loc[frame["model"] == model, "guard_note"].fillna("").iloc[0]
    items = _noted(note)
    if not items:
        return False
    if column in ("overall", "instance_mean_combined"):
        return True
    if column in ("leaderboard_overall", "leaderboard_instance_mean_combined"):
        return any(not item.endswith(NOT_TESTED) for item in items)
    return any(column in {f"{item.split(':', 1)[0]}_{m}" for m in INSTANCE_METRICS}
               for item in items)


def best_marks(frame: pd.DataFrame) -> dict[str, set[str]]:
    """For each score column, the model(s) holding its best informative value (ties all win)."""
    marks: dict[str, set[str]] = {}
    for col in score_columns(frame):
        values = {m: v for m, v in zip(frame["model"], frame[col], strict=True)
                  if _is_number(v) and not inflated(frame, m, col)}
        if values:
            top = max(values.values())
            marks[col] = {m for m, v in values.items() if math.isclose(v, top, abs_tol=1e-12)}
    return marks


def _is_number(v: Any) -> bool:  # cells are any scalar
    return isinstance(v, (int, float, np.integer, np.floating)) and not pd.isna(v)


# --- uncertainty --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bootstrap:
    """How the intervals are drawn (config `bootstrap`, the run's seed, its ontology)."""

    ontology: Ontology
    resamples: int
    confidence: float
    seed: int


def interval_scores(frame: pd.DataFrame, models: Mapping[str, ModelFiles], spec: Bootstrap
                    ) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """(`frame` with each score column's interval as `{column}_lo` / `{column}_hi`, each
    scored entry's score columns over the same bootstrap draws of the validation crops (the
    crops of the first entry's eval.csv, in order)). Entries without an eval.csv are left
    out; an eval.csv of other crops is an error (the draws would not pair)."""
    tables = {m: read_table(Path(f.eval_csv)) for m, f in models.items()
              if f.eval_csv is not None and Path(f.eval_csv).is_file()}
    if not tables or spec.resamples == 0:
        return frame, {}
    crops = list(dict.fromkeys(next(iter(tables.values()))["crop"]))
    for m, table in tables.items():
        if set(table["crop"]) != set(crops):
            raise InputError(f"{models[m].eval_csv}: scored on crops "
                             f"{sorted(set(table['crop']))}, the others on {sorted(crops)}")
    counts = resample_counts(len(crops), spec.resamples, spec.seed)
    frame.attrs["bootstrap"] = {"confidence": spec.confidence, "resamples": spec.resamples,
                                "crops": len(crops)}
    scores = {m: column_scores(t, crops, spec.ontology, counts) for m, t in tables.items()}
    bounds = {m: intervals(s, spec.confidence) for m, s in scores.items()}
    none = (math.nan, math.nan)
    added = {f"{col}_{end}": [bounds.get(m, {}).get(col, none)[i] for m in frame["model"]]
             for col in score_columns(frame) for i, end in enumerate(("lo", "hi"))}
    attrs = dict(frame.attrs)
    frame = pd.concat([frame, pd.DataFrame(added, index=frame.index)], axis=1)
    frame.attrs.update(attrs)
    return frame, scores


def leads(frame: pd.DataFrame, marks: dict[str, set[str]],
          scores: Mapping[str, Mapping[str, np.ndarray]], confidence: float) -> pd.DataFrame:
    """comparison_leads.csv: for each score column with a winner and a runner-up (the best
    informative value among the others; a tie makes the other holder the runner-up), the
    paired-bootstrap interval of winner - runner-up and whether the lead holds (lo > 0).
    Columns whose lead does not hold are recorded in frame.attrs["not_held"]."""
    rows, not_held = [], {}
    for col, winners in marks.items():
        if not all(col in scores.get(w, {}) for w in winners):
            continue
        winner = sorted(winners)[0]
        others = {m: v for m, v in zip(frame["model"], frame[col], strict=True)
                  if m != winner and _is_number(v) and not inflated(frame, m, col)
                  and col in scores.get(m, {})}
        if not others:
            continue
        runner = max(others, key=lambda m: others[m])
        d = paired_difference(scores[winner], scores[runner], col, confidence)
        holds = len(winners) == 1 and d["lo"] > 0
        if not holds:
            not_held[col] = set(winners)
        value = frame.loc[frame["model"] == winner, col].iloc[0]
        rows.append({"column": col, "winner": winner, "runner_up": runner,
                     "winner_value": value, "runner_up_value": others[runner],
                     "diff_lo": d["lo"], "diff_hi": d["hi"], "p_greater": d["p_greater"],
                     "holds": holds})
    frame.attrs["not_held"] = not_held
    return pd.DataFrame(rows, columns=list(LEAD_COLUMNS))


# --- formatting ---------------------------------------------------------------------------------

def _fmt(col: str, v: Any) -> str:  # one branch per unit
    if not _is_number(v) and not isinstance(v, str):
        return "n/a"
    if isinstance(v, str):
        return v
    if col == "parameters":
        return f"{v / 1e6:.2f} M"
    if col in ("train_wall_s", "predict_s"):
        return f"{v / 60:.1f} min" if v >= 120 else f"{v:.0f} s"
    if col.endswith("_gib"):
        return f"{v:.2f} GiB"
    if col == "patches_per_s":
        return f"{v:.1f}"
    if col in INT_COLUMNS:
        return f"{int(v)}"
    return f"{v:.3f}"


# Columns a table shows that combine two of the frame's: (shown first, format of the pair).
_PAIRS = {"epochs_steps": ("epochs", "steps", "{} ({})"),
          "tested_coverage": ("tested_covered", "n_tested", "{} of {}")}


def _cell(frame: pd.DataFrame, i: int, col: str, marks: dict[str, set[str]]
          ) -> tuple[str, bool]:
    """(text, is_best) for one cell; a missing model shows its status once, '—' elsewhere."""
    row = frame.iloc[i]
    if col == "model":
        return str(row["model"]) + (" (missing)" if row["status"] != "ok" else ""), False
    value = row[_PAIRS[col][0]] if col in _PAIRS else row[col]
    if pd.isna(value) and row["status"] != "ok":
        return "—", False
    if col in _PAIRS:
        first, second, form = _PAIRS[col]
        return form.format(_fmt(first, row[first]), _fmt(second, row[second])), False
    if col == "peak_gpu_gib" and row["device"] == "cpu":
        return "n/a (cpu)", False
    text = _fmt(col, value)
    if _is_number(value) and inflated(frame, row["model"], col):
        text += DAGGER
    best = row["model"] in marks.get(col, set())
    if best and row["model"] in frame.attrs.get("not_held", {}).get(col, ()):
        text += NOT_HELD
    lo, hi = row.get(f"{col}_lo"), row.get(f"{col}_hi")
    if _is_number(value) and _is_number(lo) and _is_number(hi):
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text, best


COSTS_TABLE = {
    "best_val_dice": "Best val Dice ↑", "parameters": "Parameters",
    "epochs_steps": "Epochs (steps)", "best_epoch": "Best epoch", "train_wall_s": "Train time",
    "patches_per_s": "Patches/s", "peak_host_rss_gib": "Peak host RSS",
    "peak_gpu_gib": "Peak GPU", "caching_strategy": "Caching", "predict_s": "Predict time",
}
SUMMARY_TABLE = {
    "model": "Model", "overall": "Overall ↑", "leaderboard_overall": "Leaderboard ↑",
    "semantic_mean_iou": "Semantic mean IoU ↑",
    "instance_mean_combined": "Instance mean combined ↑", **COSTS_TABLE,
    "built_from": "Built from",
}
LEADERBOARD_TABLE = {
    "model": "Model", "leaderboard_overall": "Leaderboard overall ↑",
    "leaderboard_semantic_mean_iou": "Semantic mean IoU ↑",
    "leaderboard_instance_mean_combined": "Instance mean combined ↑",
    "tested_coverage": "Tested classes predicted",
}
OVERVIEW_TABLE = {"model": "Model", "overall": "Overall ↑", "leaderboard_overall": "Leaderboard ↑",
                  "semantic_mean_iou": "Sem. IoU ↑", "instance_mean_combined": "Inst. combined ↑",
                  "train_wall_s": "Train time", "caching_strategy": "Caching"}
_INSTANCE_LABELS = (("f1", "F1"), ("norm_hausdorff", "norm. Hausdorff"), ("combined", "combined"))


def tables(frame: pd.DataFrame) -> tuple[tuple[str, dict[str, str]], ...]:
    """(title, {column: header}) of every table of the comparison: the summary, the
    leaderboard's view, then the per-class scores of the classes the frame has columns for."""
    k = frame_classes(frame)
    out: list[tuple[str, dict[str, str]]] = [
        ("Summary", SUMMARY_TABLE),
        ("Leaderboard (the challenge's tested classes; not predicted ones score 0)",
         LEADERBOARD_TABLE)]
    if k.instance:
        out.append(("Per-class instance scores", {
            "model": "Model", **{f"{c}_{m}": f"{c} {label} ↑" for c in k.instance
                                 for m, label in _INSTANCE_LABELS}}))
    if k.semantic:
        out.append(("Per-class IoU (semantic classes)",
                    {"model": "Model", **{f"iou_{c}": c for c in k.semantic}}))
        out.append(("Per-class Dice (semantic classes)",
                    {"model": "Model", **{f"dice_{c}": c for c in k.semantic}}))
    if "choices" in frame and frame["choices"].fillna("").astype(str).str.len().any():
        out.append(("Choices of the tuned variants and ensembles (final: made on every "
                    "validation crop, what the submission uses; each row above was scored "
                    "with choices made on the other folds' crops)",
                    {"model": "Model", "built_from": "Built from",
                     "choices": "class: member@threshold"}))
    return tuple(out)


def coverage_lines(frame: pd.DataFrame) -> list[str]:
    """The leaderboard's coverage sentence: once when every model's is the same (one ontology),
    else one per model; none when no summary has one."""
    lines = {m: str(v) for m, v in zip(frame["model"], frame[COVERAGE], strict=True)
             if isinstance(v, str) and v}
    if not lines:
        return []
    lead = ("Leaderboard: the score as the challenge computes it over its tested classes "
            "(a tested class not predicted scores 0). ")
    if len(set(lines.values())) == 1:
        return [f"{lead}The models' ontology {next(iter(lines.values()))}."]
    return [f"{lead}{m}'s ontology {line}." for m, line in lines.items()]


def _legend(frame: pd.DataFrame) -> list[str]:
    lines = coverage_lines(frame)
    lines.append("Best value of each score column in bold (↑: higher is better). Scores are the "
                 "CellMap challenge's, on the validation crops' annotated classes; n/a: the "
                 "class is not annotated in any validation crop.")
    spec = frame.attrs.get("bootstrap")
    if spec:
        lines.append(f"[lo, hi]: {spec['confidence']:.0%} interval of a bootstrap over the "
                     f"{spec['crops']} validation crops ({spec['resamples']} draws, pooled "
                     f"counts recomputed per draw). {NOT_HELD}: the best value's lead over the "
                     "runner-up does not hold in a paired bootstrap (the interval of their "
                     "difference reaches 0; comparison_leads.csv), or it is tied. A class "
                     "scored on one crop has a zero-width interval: one crop shows no "
                     "crop-to-crop variation.")
    notes = [(m, n) for m, n in zip(frame["model"], frame["guard_note"].fillna(""), strict=True)
             if n]
    if notes:
        lines.append(f"{DAGGER} Not informative: the challenge's instance-count guard skipped "
                     "every crop of the class, which then scores 1.0 (and lifts the overall "
                     "score); these values are never marked best. "
                     + "; ".join(f"{m}: {n}" for m, n in notes) + ".")
    missing = [(m, s) for m, s in zip(frame["model"], frame["status"], strict=True) if s != "ok"]
    lines += [f"{m}: {s}" for m, s in missing]
    return lines


def _shown_rows(frame: pd.DataFrame, table: Mapping[str, str], marks: dict[str, set[str]]
                ) -> list[int]:
    """The rows of a table that say something: not those whose every cell but the name is
    empty (a model in the table of derived entries' choices)."""
    return [i for i in range(len(frame))
            if any(_cell(frame, i, col, marks)[0] for col in table if col != "model")]


def to_markdown(frame: pd.DataFrame, marks: dict[str, set[str]]) -> str:
    out = ["# Model comparison", ""]
    out += [line + "\n" for line in _legend(frame)]
    for title, table in tables(frame):
        out += [f"## {title}", "", "| " + " | ".join(table.values()) + " |",
                "|" + "|".join("---" for _ in table) + "|"]
        for i in _shown_rows(frame, table, marks):
            cells = []
            for col in table:
                text, best = _cell(frame, i, col, marks)
                text = text.replace("|", "\\|")
                cells.append(f"**{text}**" if best else text)
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def html_tables(frame: pd.DataFrame, marks: dict[str, set[str]],
                which: Sequence[tuple[str, dict[str, str]]] | None = None) -> str:
    """The tables (default: every table of `tables`) as an HTML fragment, the legend above;
    every name and value is escaped."""
    parts = [f"<p>{html.escape(line)}</p>" for line in _legend(frame)]
    for title, table in (tables(frame) if which is None else which):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in table.values())
        rows = []
        for i in _shown_rows(frame, table, marks):
            cells = []
            for col in table:
                text, best = _cell(frame, i, col, marks)
                text = html.escape(text)
                cells.append(f'<td class="best"><b>{text}</b></td>' if best else f"<td>{text}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<h3>{html.escape(title)}</h3><table class=\"comparison\"><thead><tr>{head}"
                     f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "\n".join(parts)


STYLE = ("body{font-family:sans-serif;margin:1em}"
         " table{border-collapse:collapse;margin:.5em 0 1.5em}"
         " th,td{border:1px solid #bbb;padding:2px 6px;text-align:right;font-size:13px}"
         " th:first-child,td:first-child{text-align:left} td.best{background:#e6f4e6}")


def to_html(frame: pd.DataFrame, marks: dict[str, set[str]]) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Model comparison</title>"
            f"<style>{STYLE}</style></head><body><h2>Model comparison</h2>\n"
            f"{html_tables(frame, marks)}\n</body></html>\n")


# --- figure -------------------------------------------------------------------------------------

FIGURE_HEADLINE = {"overall": "overall", "leaderboard_overall": "leaderboard",
                   "semantic_mean_iou": "sem. mean IoU",
                   "instance_mean_combined": "inst. mean combined"}


def figure_matrix(frame: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
    """(columns, labels, models x columns scores): headline scores (the leaderboard's beside
    the overall), then per-class IoU of the semantic classes and the combined score of the
    instance classes."""
    k = frame_classes(frame)
    cols = [*FIGURE_HEADLINE, *k.iou_columns, *(f"{c}_combined" for c in k.instance)]
    labels = [*FIGURE_HEADLINE.values(), *k.semantic,
              *(f"{c} (combined)" for c in k.instance)]
    values = frame[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return cols, labels, values


def _outline(ax: plt.Axes, i: int, j: int, not_informative: bool, best: bool) -> None:
    """Hatch a guard-skipped cell in red; frame the best cell of a column."""
    if not_informative:
        ax.add_patch(plt.Rectangle((j - .5, i - .5), 1, 1, fill=False, hatch="///",
                                   edgecolor="red", lw=0))
    elif best:
        ax.add_patch(plt.Rectangle((j - .45, i - .45), .9, .9, fill=False, edgecolor="orange",
                                   lw=2))


def plot(frame: pd.DataFrame, out: Path) -> None:
    """Heatmap of per-class scores across models; missing, n/a and guard-skipped cells labelled."""
    cols, labels, values = figure_matrix(frame)
    models, marks = list(frame["model"]), best_marks(frame)
    width = max(7.0, 1.0 + 0.62 * len(labels))
    fig, ax = plt.subplots(figsize=(width, 2.2 + 0.55 * len(models)))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1,
                      aspect="auto")
    for i, model in enumerate(models):
        for j, col in enumerate(cols):
            v = values[i, j]
            if frame.iloc[i]["status"] != "ok" and np.isnan(v):
                text = "missing"
            elif np.isnan(v):
                text = "n/a"
            else:
                text = f"{v:.2f}" + (DAGGER if inflated(frame, model, col) else "")
                _outline(ax, i, j, inflated(frame, model, col), model in marks.get(col, ()))
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if not np.isnan(v) and v < 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.axvline(len(FIGURE_HEADLINE) - 0.5, color="white", lw=3)
    fig.colorbar(image, ax=ax, label="score (IoU; combined for instances)", fraction=0.03)
    title = ("Per-class scores on the validation crops (CellMap challenge metrics); "
             "orange frame: best of the column")
    for line in coverage_lines(frame):
        title += "\n" + textwrap.fill(line, width=int(8 * width))  # ~8 characters an inch
    if frame["guard_note"].fillna("").any():
        title += f"\n{DAGGER} every crop skipped by the challenge's guard: score not informative"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def overview_rst(frame: pd.DataFrame, marks: dict[str, set[str]], figure: Path) -> str:
    """The report's front page: a compact table and the figure, as raw HTML in reStructuredText
    (docutils would not embed the image; a data URI keeps the report self-contained)."""
    # docutils rejects input lines over 10,000 characters; URL parsing drops the newlines again
    data = base64.encodebytes(Path(figure).read_bytes()).decode("ascii").strip()
    fragment = (html_tables(frame, marks, (("Model comparison", OVERVIEW_TABLE),))
                + "\n<p>Full tables: Results, 1. Comparison.</p>"
                + '\n<img alt="per-class scores across models" '
                f'src="data:image/png;base64,{data}">')
    return ".. raw:: html\n\n" + textwrap.indent(fragment, "   ") + "\n"


# --- the stage ----------------------------------------------------------------------------------

def write_comparison(models: Mapping[str, ModelFiles], out: Mapping[str, Path],
                     bootstrap: Bootstrap | None = None) -> pd.DataFrame:
    """Write out["csv"], ["md"], ["html"], ["png"], ["rst"] (the report's front page) and,
    when given, out["leads"] (the paired bootstrap of each column's winner; intervals need
    `bootstrap` and the entries' eval.csv); return the frame."""
    frame = build(models)
    marks = best_marks(frame)
    frame, scores = interval_scores(frame, models, bootstrap) if bootstrap else (frame, {})
    table = leads(frame, marks, scores, bootstrap.confidence if bootstrap else 0.95)
    with atomic_path(out["csv"]) as tmp:
        frame.to_csv(tmp, index=False)
    if "leads" in out:
        with atomic_path(out["leads"]) as tmp:
            table.to_csv(tmp, index=False)
    write_text(out["md"], to_markdown(frame, marks))
    write_text(out["html"], to_html(frame, marks))
    plot(frame, out["png"])
    write_text(out["rst"], overview_rst(frame, marks, out["png"]))
    return frame
