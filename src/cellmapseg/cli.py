"""Console script: one sub-command per pipeline stage (cellmapseg.stages), with the workflow's
paths (cellmapseg.layout) as defaults, so that `cellmapseg STAGE` reads and writes what the
Snakemake rule of that stage would.

Every stage writes its resolved configuration beside its outputs. Bad input ends in one line on
stderr that names the file, crop or key, and exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellmapseg import config as config_mod
from cellmapseg import stages
from cellmapseg.config import Config
from cellmapseg.layout import RESULTS, Results
from cellmapseg.runtime.process import bad_input_exits, setup_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellmapseg", description=__doc__)
    p.add_argument(
        "-c", "--config", action="append", default=None, metavar="YAML",
        help="config file(s), later ones merged over earlier ones (default: config/config.yaml)",
    )
    p.add_argument("--log", default=None, help="also write the log to this file")
    sub = p.add_subparsers(dest="stage", required=True)

    s = sub.add_parser("synthetic", help="generate the embedded CellMap-like dataset")
    s.add_argument("--out-dir", type=Path, default=RESULTS.synthetic_dir)
    s = sub.add_parser("convert", help="the challenge's Zarr crops of a train manifest as NIfTI "
                                       "crops and a datalist (at data.spacing_nm)")
    s.add_argument("--root", type=Path, default=None,
                   help="folder holding <dataset>/<dataset>.zarr (default: data.zarr.root)")
    s.add_argument("--manifest", type=Path, default=None,
                   help="train crop manifest CSV (default: data.zarr.train_manifest)")
    s.add_argument("--datalist", type=Path, default=None,
                   help="datalist to write; crops go beside it (default: data.datalist)")
    s = sub.add_parser("inventory", help="validate the datalist and write the crop inventory")
    s.add_argument("--out", type=Path, default=RESULTS.inventory)
    s.add_argument("--workers", type=int, default=None,
                   help="crops read at a time (default: the CPUs this process may use)")
    s = sub.add_parser("probe", help="measure caching strategies' memory with N ranks")
    s.add_argument("--inventory", type=Path, default=RESULTS.inventory)
    s.add_argument("--out", type=Path, default=RESULTS.memory)
    s = sub.add_parser("select-caching", help="choose the caching strategy from the probe")
    s.add_argument("--memory", type=Path, default=RESULTS.memory)
    s.add_argument("--out", type=Path, default=RESULTS.caching)
    s = sub.add_parser("train", help="train one model config (torchrun, resumable)")
    s.add_argument("--model", required=True)
    s.add_argument("--inventory", type=Path, default=RESULTS.inventory)
    s.add_argument("--caching", type=Path, default=RESULTS.caching)
    s.add_argument("--out", type=Path, default=None,
                   help=f"default: {RESULTS.train('{model}').folder}")
    s.add_argument("--threads", type=int, default=None)
    s = sub.add_parser("predict", help="predict crops with a model's best checkpoint (Zarr)")
    s.add_argument("--model", required=True)
    s.add_argument("--inventory", type=Path, default=RESULTS.inventory)
    s.add_argument("--crops", nargs="*", default=None,
                   help="crop names or ids (default: validation)")
    s.add_argument("--out", type=Path, default=None,
                   help=f"default: {RESULTS.predictions('{model}')}")
    s.add_argument("--probabilities", type=Path, default=None,
                   help="also keep the probabilities in this store (default: not kept)")
    s = sub.add_parser("sweep", help="score one validation crop's kept probabilities at every "
                                     "tuning threshold")
    s.add_argument("--model", required=True, help="a model, TTA variant or mean ensemble")
    s.add_argument("--crop", required=True)
    s.add_argument("--inventory", type=Path, default=RESULTS.inventory)
    s = sub.add_parser("choose", help="a tuned variant's or ensemble's thresholds (and members)"
                                      " per fold and final, from the sweeps or eval rows")
    s.add_argument("--model", required=True)
    s.add_argument("--inventory", type=Path, default=RESULTS.inventory)
    s = sub.add_parser("derive", help="one validation crop of a tuned variant or ensemble from "
                                      "its members' kept probabilities")
    s.add_argument("--model", required=True)
    s.add_argument("--crop", required=True)
    s.add_argument("--inventory", type=Path, default=RESULTS.inventory)
    s = sub.add_parser("derive-test", help="the test crops of a tuned variant or ensemble from "
                                           "its members' kept test probabilities")
    s.add_argument("--model", default=None, help="default: submission.model")
    s = sub.add_parser("predict-test", help="predict the crops of a test manifest from their "
                                            "datasets' EM with a model's best checkpoint")
    s.add_argument("--model", default=None, help="default: submission.model")
    s.add_argument("--root", type=Path, default=None, help="default: data.zarr.root")
    s.add_argument("--manifest", type=Path, default=None,
                   help="test crop manifest (default: data.zarr.test_manifest)")
    s.add_argument("--out", type=Path, default=None,
                   help=f"default: {RESULTS.test_predictions('{model}')}")
    s = sub.add_parser("evaluate", help="score predictions with the challenge's metrics")
    s.add_argument("--model", required=True)
    s.add_argument("--inventory", type=Path, default=RESULTS.inventory)
    s.add_argument("--crops", nargs="*", default=None)
    s = sub.add_parser("report-model", help="one model's report figures")
    s.add_argument("--model", required=True)
    s.add_argument("--inventory", type=Path, default=RESULTS.inventory)
    sub.add_parser("report-probe", help="the memory probe and caching decision as HTML")
    s = sub.add_parser("compare", help="the comparison table and figure of all models "
                                       "(missing ones marked)")
    s.add_argument("--results", type=Path, default=RESULTS.root)
    s = sub.add_parser("submit", help="pack a model's test-crop predictions as the challenge's "
                                      "submission zip, checked against the test manifest")
    s.add_argument("--model", default=None, help="default: submission.model")
    s.add_argument("--manifest", type=Path, default=None,
                   help="test crop manifest (the challenge's test_crop_manifest.csv format; "
                        "default: data.zarr.test_manifest)")
    s.add_argument("--predictions", type=Path, default=None,
                   help=f"default: {RESULTS.test_predictions('{model}')}")
    s.add_argument("--out", type=Path, default=None, help=f"default: {RESULTS.submission}")
    s = sub.add_parser("check-submission", help="compare a submission zip with a test manifest")
    s.add_argument("zip", type=Path)
    s.add_argument("--manifest", type=Path, required=True)
    return p


def _given(value: Any, key: str, configured: Any) -> Any:
    """A command-line value, else the configured one; one line naming the key without."""
    if value is not None:
        return value
    if configured is None:
        raise config_mod.ConfigError(f"config: key '{key}' is not set (or pass it as an option)")
    return Path(configured)


def _run(args: argparse.Namespace, cfg: Config) -> None:
    r = RESULTS
    model = getattr(args, "model", None)
    if args.stage in ("predict-test", "derive-test", "submit") and model is None:
        model = cfg.submission_model
    crop = getattr(args, "crop", None)
    z = cfg.data.zarr
    runs: dict[str, Callable[[], Any]] = {
        "synthetic": lambda: stages.synthetic(cfg, args.out_dir),
        "convert": lambda: stages.convert(
            cfg, _given(args.root, "data.zarr.root", z.root),
            _given(args.manifest, "data.zarr.train_manifest", z.train_manifest),
            args.datalist or Path(cfg.data.datalist), nifti=True),
        "predict-test": lambda: stages.predict_test(
            cfg, model, r.train(cfg.trained_model(model)).summary,
            _given(args.root, "data.zarr.root", z.root),
            _given(args.manifest, "data.zarr.test_manifest", z.test_manifest),
            args.out or r.test_predictions(model),
            (args.out.parent / r.test_manifest(model).name) if args.out
            else r.test_manifest(model), kept=None if args.out else r.test_probabilities(model)),
        "sweep": lambda: stages.sweep(
            cfg, model, [r.crop_probabilities(s, crop) for s in cfg.sweep_sources(model)],
            args.inventory, crop, r.crop_sweep(model, crop)),
        "choose": lambda: stages.choose(cfg, model, args.inventory,
                                        _candidates(cfg, model, args.inventory),
                                        r.choices(model)),
        "derive": lambda: stages.derive(
            cfg, model, r.choices(model),
            [r.crop_probabilities(s, crop) for s in cfg.entry(model).members], args.inventory,
            crop, r.crop_predictions(model, crop), r.crop_manifest(model, crop)),
        "derive-test": lambda: stages.derive_test(
            cfg, model, r.choices(model),
            [r.test_probabilities(s) for s in cfg.entry(model).members],
            [r.test_manifest(s) for s in cfg.entry(model).members],
            r.test_predictions(model), r.test_manifest(model)),
        "inventory": lambda: stages.inventory(cfg, args.out, args.workers),
        "probe": lambda: stages.probe(cfg, args.inventory, args.out),
        "select-caching": lambda: stages.select_caching(cfg, args.memory, args.out),
        "train": lambda: stages.train(cfg, model, args.inventory, args.caching,
                                      args.out or r.train(model).folder, args.threads),
        "predict": lambda: stages.predict(
            cfg, model, r.train(cfg.trained_model(model)).summary, args.inventory,
            args.out or r.predictions(model),
            (args.out.parent / r.manifest(model).name) if args.out else r.manifest(model),
            args.crops, r.caching if r.caching.is_file() else None,
            kept=args.probabilities),
        "evaluate": lambda: stages.evaluate(
            cfg, r.predictions(model), args.inventory, r.eval_csv(model), r.eval_summary(model),
            args.crops),
        "report-model": lambda: stages.report_model(
            model, r.train(model).metrics, r.eval_summary(model), r.predictions(model),
            args.inventory, r.model_report(model)),
        "report-probe": lambda: stages.report_probe(r.memory, r.caching, r.probe_report),
        "compare": lambda: _compare(cfg, Results(args.results)),
        "submit": lambda: stages.submit(
            cfg, args.predictions or r.test_predictions(model),
            _given(args.manifest, "data.zarr.test_manifest", z.test_manifest),
            args.out or r.submission, (args.out or r.submission).with_suffix(".json")),
        "check-submission": lambda: stages.check_submission(args.zip, args.manifest),
    }
    runs[args.stage]()


def _candidates(cfg: Config, model: str, inventory: Path) -> dict[str, list[Path]]:
    """The workflow's candidate tables of a derived entry (as its `choose` rule lists them)."""
    from cellmapseg.data.inventory import validation_crop_ids

    crops = validation_crop_ids(inventory)
    tables = {}
    for member, (owner, kind) in cfg.candidate_tables(model).items():
        path = RESULTS.crop_sweep if kind == "sweep" else RESULTS.crop_eval
        tables[member] = [path(owner, c) for c in crops]
    return tables


def _compare(cfg: Config, results: Results) -> None:
    entries = list(cfg.entries)
    stages.compare(cfg, [results.train(m).summary for m in cfg.models],
                   [results.eval_summary(m) for m in entries], results.comparison(),
                   [results.eval_csv(m) for m in entries], [results.manifest(m) for m in entries],
                   [results.choices(m) for m in cfg.derived_entries])


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    setup_logging(args.log)
    with bad_input_exits():
        cfg = config_mod.load(*(args.config or ["config/config.yaml"]))
        _run(args, cfg)


if __name__ == "__main__":
    main()
