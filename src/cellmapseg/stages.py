"""The pipeline's stages, one function each: what the console script's sub-commands and the
workflow's scripts run. Each is handed every path it reads and writes (their names come from
cellmapseg.layout), writes its resolved configuration beside its outputs, and raises InputError
(one line naming the file, crop or key) on bad input.

Heavy imports happen inside the stages, so that a stage pays only for what it uses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellmapseg import config as config_mod
from cellmapseg.config import Config
from cellmapseg.errors import InputError
from cellmapseg.layout import (
    TrainFiles,
    predictions_config,
    resolved_config,
    synthetic_summary,
)

log = logging.getLogger("cellmapseg")


def synthetic(cfg: Config, out_dir: Path) -> Path:
    from cellmapseg.synthetic.generate import generate

    config_mod.write_resolved(cfg, out_dir / "config.yaml")
    datalist = generate(cfg.data.synthetic, cfg.data.spacing_nm, out_dir, cfg.classes)
    log.info("synthetic dataset written: %s", datalist)
    return datalist


def synthetic_zarr(cfg: Config, root: Path, train_manifest: Path, test_manifest: Path) -> None:
    """The embedded dataset in the challenge's Zarr layout, with its two crop manifests."""
    from cellmapseg.atomic import write_json
    from cellmapseg.synthetic.challenge_data import generate_zarr

    config_mod.write_resolved(cfg, resolved_config(train_manifest))
    summary = generate_zarr(cfg.data.synthetic, cfg.data.spacing_nm, Path(root),
                            Path(train_manifest), Path(test_manifest), cfg.classes)
    write_json(synthetic_summary(train_manifest), summary)
    log.info("synthetic Zarr dataset written: %s (%d datasets)", root,
             len(summary["datasets"]))


def convert(cfg: Config, root: Path, manifest: Path, datalist: Path,
            nifti: bool | None = None) -> None:
    """The crops of a train manifest, planned in the challenge's Zarr at data.spacing_nm, as
    a datalist (`datalist`, written last) of NIfTI copies (`nifti`; default
    data.zarr.nifti_copy) or of references every stage reads in place (data.zcrop)."""
    from cellmapseg.data.convert import convert as run

    config_mod.write_resolved(cfg, resolved_config(datalist))
    held_out = cfg.data.zarr.validation_crops
    if not held_out and cfg.data.synthetic.zarr:  # the generator's own validation split
        held_out = read_json(synthetic_summary(manifest))["validation_crops"]
    nifti = cfg.data.zarr.nifti_copy if nifti is None else nifti
    out = run(root, manifest, cfg.classes, cfg.data.spacing_nm, datalist, held_out, nifti)
    log.info("%s the crops of %s: %s", "converted" if nifti else "referenced", manifest, out)


def inventory(cfg: Config, out_csv: Path, workers: int | None = None) -> None:
    """The checked inventory; `workers` crops are read at a time (default and cap: the CPUs
    this job may use)."""
    from cellmapseg.data.inventory import write_inventory
    from cellmapseg.runtime.torchrun import usable_cpus

    config_mod.write_resolved(cfg, resolved_config(out_csv))
    workers = usable_cpus(workers)
    frame = write_inventory(cfg, out_csv, workers=workers)
    log.info("inventory of %d crops written with %d workers: %s", len(frame), workers, out_csv)


def probe(cfg: Config, inventory_csv: Path, out: Path) -> None:
    from cellmapseg.probe.memory import run_probe

    config_mod.write_resolved(cfg, resolved_config(out))
    result = run_probe(cfg, inventory_csv, out)
    log.info("memory probe (%d ranks, %d crops) written: %s", result["probe_ranks"],
             len(result["probe_crops"]), out)


def select_caching(cfg: Config, memory: Path, out: Path) -> None:
    from cellmapseg.probe.select import write_selection

    config_mod.write_resolved(cfg, resolved_config(out))
    result = write_selection(cfg, memory, out)
    log.info("caching strategy %s: %s", result["strategy"], result["reason"])


def train(cfg: Config, model: str, inventory_csv: Path, caching: Path, out_dir: Path,
          threads: int | None = None) -> None:
    """Check what can be checked before any GPU work, then start the ranks with torchrun."""
    from cellmapseg.runtime.torchrun import (
        launch,
        require_nodes,
        run_logged,
        threads_per_rank,
        usable_cpus,
    )
    from cellmapseg.train.preflight import prepare_training

    job = cfg.allocation(model)
    require_nodes(job.nodes)  # before the store and the train folder
    m = cfg.model(model)
    cfg = prepare_training(cfg, m, inventory_csv, caching, usable_cpus(threads))
    files = TrainFiles(out_dir)
    config_mod.write_resolved(cfg, files.config)
    world, per_node = cfg.world_size(model), cfg.ranks_per_node(model)
    gpu = cfg.train.gpus > 0
    fixed = None if gpu else cfg.train.cpu_threads  # bit-identical wherever it runs
    # the same threads per rank on any layout of the same world size (1 node x 2, 2 x 1)
    per_rank = max(1, fixed // world) if fixed else threads_per_rank(threads, per_node)
    cmd, env = launch(job.nodes, per_node, "cellmapseg.train.rank", [
        "--model", model, "--config", files.config, "--inventory", inventory_csv,
        "--caching", caching, "--out", out_dir], cpus=job.cpus)
    env.update({"OMP_NUM_THREADS": str(per_rank), **(cfg.train.cuda_env if gpu else {}),
                **({"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
                   if gpu and cfg.train.deterministic else {})})
    log.info("training %s with %d rank(s) (%d node(s) x %d); log: %s", model, world, job.nodes,
             per_node, files.log)
    run_logged(cmd, env, files.log, f"training {model}")


def _network(cfg: Config, name: str) -> tuple[Any, Any]:
    """(the trained model's config, the TTA variant or None) of a network entry `name`."""
    entry = cfg.entry(name)
    if not entry.network:
        raise InputError(f"predict: '{name}' is a {entry.kind} entry, predicted from its "
                         "members' kept probabilities (derive), not by a network")
    return cfg.model(entry.model), entry if entry.kind == "tta" else None


def predict(cfg: Config, model: str, train_summary: Path, inventory_csv: Path, out: Path,
            manifest: Path, crops: Sequence[str] | None = None,
            caching: Path | None = None, threads: int | None = None,
            kept: Path | None = None) -> None:
    """Sliding-window prediction of the validation crops (or `crops`) with the best checkpoint
    (of a model, or of a TTA variant's model with its transforms); with the `caching`
    decision, images the training store holds on this node are read there. `threads`:
    torch's CPU threads, capped by the CPUs this job may use (default: its own). `kept`: a
    store for the probabilities (what tuning and ensembles read)."""
    import torch

    from cellmapseg.atomic import write_json
    from cellmapseg.data.inventory import read_inventory
    from cellmapseg.predict.crops import predict_crops
    from cellmapseg.probe.select import read_selection

    if threads:
        from cellmapseg.runtime.torchrun import usable_cpus

        torch.set_num_threads(usable_cpus(threads))
    m, variant = _network(cfg, model)
    out, train_summary = Path(out), Path(train_summary)
    summary = read_json(train_summary)
    config_mod.write_resolved(cfg, predictions_config(out))
    ckpt = train_summary.parent / summary["checkpoint"]
    selection = read_selection(caching) if caching is not None else None
    result = predict_crops(cfg, m, ckpt, read_inventory(inventory_csv), out, crops, selection,
                           Path(kept) if kept else None, variant)
    write_json(manifest, result)
    log.info("predicted %d crop(s) with %s: %s", len(result["crops"]), model, out)


def predict_test(cfg: Config, model: str, train_summary: Path, root: Path, manifest: Path,
                 out: Path, out_manifest: Path, threads: int | None = None,
                 kept: Path | None = None) -> None:
    """Predict every crop of a test manifest from its dataset's EM (with the window's
    context) with the best checkpoint (a model's, or a TTA variant's model with its
    transforms); arrays carry their world voxel size and translation; `kept`: a store for the
    probabilities."""
    import torch

    from cellmapseg.atomic import write_json
    from cellmapseg.data.manifest import read_manifest
    from cellmapseg.predict.test_crops import predict_test_crops

    if threads:
        from cellmapseg.runtime.torchrun import usable_cpus

        torch.set_num_threads(usable_cpus(threads))
    rows = read_manifest(manifest)  # before any other work: a bad manifest is one line
    m, variant = _network(cfg, model)
    out, train_summary = Path(out), Path(train_summary)
    summary = read_json(train_summary)
    config_mod.write_resolved(cfg, predictions_config(out))
    result = predict_test_crops(cfg, m, train_summary.parent / summary["checkpoint"],
                                root, rows, out, Path(kept) if kept else None, variant)
    write_json(out_manifest, {**result, "test_manifest": str(manifest)})
    log.info("predicted %d test crop(s) with %s: %s", len(result["crops"]), model, out)


def evaluate(cfg: Config, predictions: Path, inventory_csv: Path, out_csv: Path,
             out_summary: Path, crops: list[str] | None = None) -> None:
    """Score predictions as the CellMap challenge does (annotated classes only)."""
    from cellmapseg.evaluate.score import evaluate as score

    config_mod.write_resolved(cfg, resolved_config(out_csv))
    summary = score(predictions, inventory_csv, cfg.data.spacing_nm, out_csv, out_summary,
                    cfg.classes, crops, block=cfg.inference.block_size, truth=_truth(cfg),
                    padding=cfg.data.padding_mask)
    log.info("evaluated %s: overall %s", predictions, summary.get("overall"))


def _truth(cfg: Config) -> Any:
    """On the Zarr route, the ground truth in the challenge's Zarr at each class's own grid
    (the train manifest's): crops are scored as the server scores them. Else None (the
    converted or given NIfTI labels, on the training grid)."""
    z = cfg.data.zarr
    if not z.enabled:
        return None
    from cellmapseg.evaluate.truth import ZarrTruth

    return ZarrTruth.read(Path(z.root), Path(z.train_manifest), cfg.submission.placement)


def sweep(cfg: Config, name: str, sources: Sequence[Path], inventory_csv: Path, crop: str,
          out_csv: Path) -> None:
    """One validation crop scored at every threshold of tuning.grid, from the mean kept
    probability of `sources` (a network entry's store, or a mean ensemble's members')."""
    from cellmapseg.combine.sweep import sweep_crop

    config_mod.write_resolved(cfg, resolved_config(out_csv))
    table = sweep_crop(cfg, [Path(s) for s in sources], Path(inventory_csv), crop,
                       Path(out_csv), _truth(cfg))
    log.info("swept %s of %s over %d thresholds: %d rows", crop, name, len(cfg.tuning.grid),
             len(table))


def choose(cfg: Config, name: str, inventory_csv: Path,
           tables: Mapping[str, Sequence[Path]], out: Path) -> None:
    """A derived entry's thresholds.json: per fold and final choices from its candidates'
    per-crop tables ({member: one table per validation crop, inventory order}): sweeps, or,
    for a per-class ensemble with fixed thresholds, the members' eval rows; none for a mean
    ensemble with fixed thresholds."""
    import pandas as pd

    from cellmapseg.atomic import write_json
    from cellmapseg.combine.choose import (
        choices,
        fixed_candidates,
        sweep_candidates,
    )
    from cellmapseg.data.inventory import validation_crop_ids
    from cellmapseg.evaluate.score import CSV_COLUMNS, read_table

    entry = cfg.entry(name)
    crops = validation_crop_ids(inventory_csv)
    fixed = cfg.inference.thresholds(cfg.classes.num_channels)
    sweeps = entry.thresholds == "tuned"
    read = {m: pd.concat([read_table(Path(p), ("threshold",) if sweeps else ())
                          for p in paths], ignore_index=True)
            for m, paths in tables.items()}
    if not read:
        candidates = pd.DataFrame(columns=["member", "threshold", *CSV_COLUMNS])
    elif sweeps:
        candidates = sweep_candidates(read)
    else:
        candidates = fixed_candidates(read, cfg.classes, fixed)
    result = choices(entry, crops, cfg.tuning.folds, candidates, cfg.classes, fixed,
                     cfg.tuning.grid)
    config_mod.write_resolved(cfg, resolved_config(out))
    write_json(out, result)
    log.info("choices of %s (%s, thresholds %s) over %d crops in %d folds: %s", name,
             entry.method, entry.thresholds, len(crops), cfg.tuning.folds, out)


def derive(cfg: Config, name: str, choices: Path, sources: Sequence[Path], inventory_csv: Path,
           crop: str, out: Path, manifest: Path) -> None:
    """One validation crop of a derived entry from its members' kept probabilities."""
    from cellmapseg.atomic import write_json
    from cellmapseg.combine.derive import derive_crop

    config_mod.write_resolved(cfg, predictions_config(out))
    result = derive_crop(cfg, cfg.entry(name), read_json(Path(choices)),
                         [Path(s) for s in sources], Path(inventory_csv), crop, Path(out))
    write_json(manifest, result)


def derive_test(cfg: Config, name: str, choices: Path, sources: Sequence[Path],
                manifests: Sequence[Path], out: Path, out_manifest: Path) -> None:
    """The test crops of a derived entry from its members' kept test probabilities, with the
    final choices (made on every validation crop)."""
    from cellmapseg.atomic import write_json
    from cellmapseg.combine.derive import derive_test as run

    config_mod.write_resolved(cfg, predictions_config(out))
    result = run(cfg, cfg.entry(name), read_json(Path(choices)), [Path(s) for s in sources],
                 [read_json(Path(m)) for m in manifests], Path(out))
    write_json(out_manifest, result)
    log.info("derived %d test crop(s) of %s: %s", len(result["crops"]), name, out)


def gather_predictions(crop_stores: Sequence[Path], crop_manifests: Sequence[Path], out: Path,
                       manifest: Path) -> None:
    """The model's predictions.zarr and manifest from its crops' (one prediction job per crop):
    links to the crop groups, no copy; the same store and manifest as one run over every crop."""
    from cellmapseg.atomic import write_json
    from cellmapseg.data import predictions
    from cellmapseg.predict.crops import merge_manifests

    if len(crop_stores) != len(crop_manifests):
        raise ValueError(f"gather_predictions: {len(crop_stores)} stores, "
                         f"{len(crop_manifests)} manifests")
    manifests = {Path(p): read_json(Path(p)) for p in crop_manifests}
    merged = merge_manifests(manifests)
    stores = {}
    for store, m in zip(crop_stores, manifests.values(), strict=True):
        stores.update(dict.fromkeys(m["crops"], Path(store)))
    predictions.gather(Path(out), stores, merged)
    write_json(manifest, merged)
    log.info("gathered %d crop(s) of %s: %s", len(stores), merged["model"], out)


def evaluate_crop(cfg: Config, predictions: Path, inventory_csv: Path, crop: str,
                  out_csv: Path) -> None:
    """One crop's rows of eval.csv (the workflow scores each crop in a job of its own)."""
    from cellmapseg.evaluate.score import score_table, write_table

    config_mod.write_resolved(cfg, resolved_config(out_csv))
    table, _ = score_table(predictions, inventory_csv, cfg.data.spacing_nm, Path(out_csv).parent,
                           cfg.classes, [crop], block=cfg.inference.block_size,
                           truth=_truth(cfg), padding=cfg.data.padding_mask)
    write_table(table, out_csv)
    log.info("scored %s of %s: %d class row(s)", crop, predictions, len(table))


def gather_scores(cfg: Config, inventory_csv: Path, tables: Sequence[Path], out_csv: Path,
                  out_summary: Path) -> None:
    """eval.csv and eval_summary.json from the validation crops' tables, in inventory order."""
    from cellmapseg.data.inventory import CROP_COLUMNS, read_inventory, select
    from cellmapseg.evaluate.score import gather

    config_mod.write_resolved(cfg, resolved_config(out_csv))
    crops = select(read_inventory(inventory_csv, CROP_COLUMNS), None, "evaluate")["crop"]
    summary = gather(tables, [str(c) for c in crops], out_csv, out_summary, cfg.classes)
    log.info("evaluated %d crop(s): overall %s", len(tables), summary.get("overall"))


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc


def report_model(model: str, metrics: Path, eval_summary: Path, predictions: Path,
                 inventory_csv: Path, out: Mapping[str, Path]) -> None:
    """One model's report figures: training curves, per-class scores, example slices. The
    classes are those of each input (metrics.csv's columns, the summary's ontology, the store's
    `classes`); the truth's label values are those of the training's resolved config."""
    import pandas as pd

    from cellmapseg.data.inventory import CROP_COLUMNS, read_inventory
    from cellmapseg.report import figures

    if not Path(metrics).is_file():
        raise InputError(f"{metrics}: file not found")
    figures.plot_training(pd.read_csv(metrics), model, out["curves"])
    figures.plot_scores(read_json(eval_summary), model, out["scores"])
    labels = figures.config_labels(TrainFiles(Path(metrics).parent).config)
    if labels is None:
        log.warning("report for %s: no label values in %s; the example slices assume label "
                    "value = channel + 1", model, TrainFiles(Path(metrics).parent).config)
    shown = figures.plot_examples(predictions, read_inventory(inventory_csv, CROP_COLUMNS), model,
                                  out["examples"], labels=labels)
    log.info("report for %s: example crops %s", model, ", ".join(shown))


def report_entry(name: str, eval_summary: Path, predictions: Path, inventory_csv: Path,
                 train_summary: Path, out: Mapping[str, Path]) -> None:
    """A variant's or ensemble's report figures: per-class scores and example slices (the
    label values from the resolved config beside `train_summary`, a model's under it)."""
    from cellmapseg.data.inventory import CROP_COLUMNS, read_inventory
    from cellmapseg.report import figures

    figures.plot_scores(read_json(eval_summary), name, out["scores"])
    labels_config = TrainFiles(Path(train_summary).parent).config
    labels = figures.config_labels(labels_config)
    if labels is None:
        raise InputError(f"{labels_config}: no label values (classes.atomic) in this config")
    shown = figures.plot_examples(predictions, read_inventory(inventory_csv, CROP_COLUMNS), name,
                                  out["examples"], labels=labels)
    log.info("report for %s: example crops %s", name, ", ".join(shown))


def report_probe(memory: Path, caching: Path, out: Mapping[str, Path]) -> None:
    """The memory probe and the caching decision as HTML pages (out["memory"], ["caching"])."""
    from cellmapseg.atomic import write_text
    from cellmapseg.report.probe import caching_html, memory_html

    write_text(out["memory"], memory_html(read_json(memory)))
    write_text(out["caching"], caching_html(read_json(caching)))


def compare(cfg: Config, train_summaries: Sequence[Path], eval_summaries: Sequence[Path],
            out: Mapping[str, Path], eval_tables: Sequence[Path] | None = None,
            manifests: Sequence[Path] | None = None,
            choices: Sequence[Path] | None = None) -> None:
    """comparison.{csv,md,html,png,rst} and comparison_leads.csv: every entry (models, then
    variants, then ensembles, in config order), missing ones marked. `train_summaries` are the
    models' files in config order; `eval_summaries`, `eval_tables` (bootstrap intervals) and
    `manifests` (prediction time) the entries'; `choices` the tuned variants' and ensembles'
    thresholds.json, in entry order."""
    from cellmapseg.report.comparison import Bootstrap, ModelFiles, write_comparison

    entries = cfg.entries
    derived = [n for n, e in entries.items() if not e.network]
    lengths = {"training summaries": (train_summaries, len(cfg.models)),
               "evaluation summaries": (eval_summaries, len(entries)),
               "eval tables": (eval_tables, len(entries)),
               "manifests": (manifests, len(entries)), "choices": (choices, len(derived))}
    for what, (given, n) in lengths.items():
        if given is not None and len(given) != n:
            raise ValueError(f"compare: {len(given)} {what} for {n} entries")
    trained = dict(zip(cfg.models, train_summaries, strict=True))
    seconds = _predict_seconds(entries, manifests)
    chosen = dict(zip(derived, choices, strict=True)) if choices is not None else {}
    files = {}
    for i, (name, e) in enumerate(entries.items()):
        files[name] = ModelFiles(
            Path(trained[name]) if name in trained else None, Path(eval_summaries[i]),
            Path(eval_tables[i]) if eval_tables is not None else None,
            Path(chosen[name]) if name in chosen else None, seconds.get(name), e.kind,
            _built_from(cfg, name))
    spec = Bootstrap(cfg.classes, cfg.bootstrap.resamples, cfg.bootstrap.confidence, cfg.seed)
    frame = write_comparison(files, out, spec)
    log.info("comparison of %d entries (%d missing) in %s", len(frame),
             int((frame["status"] != "ok").sum()), Path(out["csv"]).parent)


def _built_from(cfg: Config, name: str) -> str:
    e = cfg.entry(name)
    if e.kind == "model":
        return ""
    if e.kind == "tta":
        t = e.tta
        passes = "flips" if t.flips else ""
        passes += (" + rot90" if passes else "rot90") if t.rot90 else ""
        return f"{e.model} ({passes or 'identity'})"
    if e.kind == "tuned":
        return f"{e.members[0]} (tuned thresholds)"
    how = {"mean": "mean", "per_class": "per class"}[e.method]
    return f"{', '.join(e.members)} ({how}, {e.thresholds} thresholds)"


def _predict_seconds(entries: Mapping[str, Any], manifests: Sequence[Path] | None
                     ) -> dict[str, float]:
    """Prediction seconds over the validation crops per entry: its own, plus its members'
    networks for a derived entry (what it costs to produce from scratch)."""
    if manifests is None:
        return {}
    own = {}
    for name, path in zip(entries, manifests, strict=True):
        if Path(path).is_file():
            own[name] = float(sum(read_json(Path(path)).get("seconds", {}).values()))
    out = {}
    for name, e in entries.items():
        if name not in own:
            continue
        if e.network:
            out[name] = own[name]
        elif all(m in own for m in e.members):
            out[name] = own[name] + sum(own[m] for m in e.members)
    return out


def submit(cfg: Config, predictions: Path, manifest: Path, out_zip: Path, out_json: Path) -> None:
    """The challenge submission of a model's test-crop predictions (`out_zip`), each array at
    its manifest row's grid by the official rules, checked against the manifest before it is
    kept; the packing summary and the check's result in `out_json`."""
    from cellmapseg.atomic import write_json
    from cellmapseg.data.manifest import read_manifest
    from cellmapseg.submit.check import check
    from cellmapseg.submit.pack import pack

    predictions, out_zip, out_json = Path(predictions), Path(out_zip), Path(out_json)
    rows = read_manifest(manifest)
    summary = pack(predictions, rows, cfg.classes, out_zip,
                   placement=cfg.submission.placement)
    problems, missing = check(out_zip, rows)
    if problems:
        Path(out_zip).unlink(missing_ok=True)
        raise InputError("\n".join(problems))
    write_json(out_json, {**summary, "manifest": str(manifest), "check": "passed",
                          "not_submitted": missing})
    log.info("submission %s: %s", out_zip, summary["line"])


def check_submission(zip_path: Path, manifest: Path) -> None:
    """Compare a submission zip with a test manifest; InputError naming every mismatch."""
    from cellmapseg.data.manifest import read_manifest
    from cellmapseg.submit.check import check

    problems, missing = check(zip_path, read_manifest(manifest))
    if problems:
        raise InputError("\n".join(problems))
    log.info("%s: every array matches %s (%d manifest arrays not submitted)", zip_path,
             manifest, len(missing))
