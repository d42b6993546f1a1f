"""Console script: one sub-command per pipeline stage. Snakemake rules call the same functions.

Every stage writes its resolved configuration beside its outputs. Bad input ends in one line on
stderr that names the file, crop or key, and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cellmapseg import config as config_mod
from cellmapseg.config import Config
from cellmapseg.errors import InputError

EXIT_BAD_INPUT = 2
log = logging.getLogger("cellmapseg")


def setup_logging(log_file: str | Path | None = None) -> None:
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    handlers: list[logging.Handler] = [console]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.INFO, handlers=handlers, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@contextlib.contextmanager
def bad_input_exits() -> Iterator[None]:
    """Turn an InputError into its message lines on stderr and a non-zero exit (no traceback:
    the message already names the file, crop or key). Other exceptions propagate unchanged."""
    try:
        yield
    except InputError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        if any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers):
            log.error("%s", exc, extra={"file_only": True})  # the rule's log file gets it too
        sys.exit(EXIT_BAD_INPUT)


# --- stages -------------------------------------------------------------------------------

def stage_synthetic(cfg: Config, out_dir: Path) -> Path:
    from cellmapseg.data.synthetic import generate

    config_mod.write_resolved(cfg, out_dir / "config.yaml")
    datalist = generate(cfg.data.synthetic, cfg.data.spacing_nm, out_dir)
    log.info("synthetic dataset written: %s", datalist)
    return datalist


def stage_inventory(cfg: Config, out_csv: Path, workers: int = 1) -> None:
    from cellmapseg.data.inventory import write_inventory

    config_mod.write_resolved(cfg, out_csv.with_suffix(".config.yaml"))
    frame = write_inventory(cfg, out_csv, workers=workers)
    log.info("inventory of %d crops written: %s", len(frame), out_csv)


def stage_probe(cfg: Config, inventory: Path, out: Path) -> None:
    from cellmapseg.probe.memory import run_probe

    config_mod.write_resolved(cfg, out.with_suffix(".config.yaml"))
    result = run_probe(cfg, inventory, out)
    log.info("memory probe (%d ranks, %d crops) written: %s", result["probe_ranks"],
             len(result["probe_crops"]), out)


def stage_select_caching(cfg: Config, memory: Path, out: Path) -> None:
    from cellmapseg.probe.select import write_selection

    config_mod.write_resolved(cfg, out.with_suffix(".config.yaml"))
    result = write_selection(cfg, memory, out)
    log.info("caching strategy %s: %s", result["strategy"], result["reason"])


def stage_train(cfg: Config, model: str, inventory: Path, caching: Path, out_dir: Path,
                threads: int | None = None) -> None:
    """Check what can be checked before any GPU work, then start the ranks with torchrun."""
    from cellmapseg.data.caching import check_store_space
    from cellmapseg.launch import torchrun_command
    from cellmapseg.models.networks import check_roi
    from cellmapseg.probe.memory import read_inventory
    from cellmapseg.probe.select import read_selection
    from cellmapseg.train.data import caching_from_selection, check_batch

    m = cfg.model(model)
    check_roi(model, m)
    inv = read_inventory(inventory)
    check_batch(model, m, int((inv["split"] == "training").sum()), cfg.train.world_size)
    selection = read_selection(caching)
    check_store_space(selection["strategy"], inv,
                      caching_from_selection(cfg, selection))  # e.g. /dev/shm full
    resolved = out_dir / "config.yaml"
    config_mod.write_resolved(cfg, resolved)
    world = cfg.train.world_size
    cmd = torchrun_command(world, "cellmapseg.train.run", [
        "--model", model, "--config", resolved, "--inventory", inventory, "--caching", caching,
        "--out", out_dir])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_rank(threads, world))}
    train_log = out_dir / "train.log"
    log.info("training %s with %d rank(s); log: %s", model, world, train_log)
    with open(train_log, "a") as fh:  # appended: a resumed run continues the same log
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        text = train_log.read_text(errors="replace").splitlines()
        errors = list(dict.fromkeys(ln[len("error: "):] for ln in text if ln.startswith("error: ")))
        if errors:
            raise InputError("\n".join(errors))
        raise RuntimeError(f"training {model} failed (torchrun exit {proc.returncode}); "
                           f"see {train_log}")


def threads_per_rank(threads: int | None, world: int) -> int:
    """CPU threads for each rank: the job's threads, but never more than the CPUs this process
    may run on (a scheduler can grant more threads than the machine has: oversubscribed
    OpenMP threads slow training down several times)."""
    usable = len(os.sched_getaffinity(0))
    return max(1, min(threads or usable, usable) // world)


def stage_predict(cfg: Config, model: str, train_summary: Path, inventory: Path, out: Path,
                  crops: list[str] | None = None) -> None:
    """Sliding-window prediction of the validation crops (or `crops`) with the best checkpoint."""
    from cellmapseg.atomic import write_json
    from cellmapseg.predict.run import predict_crops
    from cellmapseg.probe.memory import read_inventory

    cfg.model(model)
    summary = _read_json(train_summary)
    config_mod.write_resolved(cfg, out.parent / "config.yaml")
    manifest = predict_crops(cfg, model, train_summary.parent / summary["checkpoint_best"],
                             read_inventory(inventory), out, crops)
    write_json(out.parent / "manifest.json", manifest)
    log.info("predicted %d crop(s) with %s: %s", len(manifest["crops"]), model, out)


def stage_evaluate(cfg: Config, predictions: Path, inventory: Path, out_csv: Path,
                   out_summary: Path, crops: list[str] | None = None) -> None:
    """Score predictions as the CellMap challenge does (annotated classes only)."""
    from cellmapseg.evaluate.run import evaluate

    config_mod.write_resolved(cfg, out_csv.with_suffix(".config.yaml"))
    summary = evaluate(predictions, inventory, cfg.data.spacing_nm, out_csv, out_summary, crops,
                       block=cfg.inference.block_size)
    log.info("evaluated %s: overall %s", predictions, summary.get("overall"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc


def stage_report_model(model: str, metrics: Path, eval_summary: Path, predictions: Path,
                       inventory: Path, out: dict[str, Path]) -> None:
    """One model's report figures: training curves, per-class scores, example slices."""
    import pandas as pd

    from cellmapseg.report import figures

    if not Path(metrics).is_file():
        raise InputError(f"{metrics}: file not found")
    figures.plot_training(pd.read_csv(metrics), model, out["curves"])
    figures.plot_scores(_read_json(eval_summary), model, out["scores"])
    shown = figures.plot_examples(predictions, pd.read_csv(inventory), model, out["examples"])
    log.info("report for %s: example crops %s", model, ", ".join(shown))


def stage_report_probe(memory: Path, caching: Path, out_memory: Path, out_caching: Path) -> None:
    """The memory probe and the caching decision as HTML pages."""
    from cellmapseg.atomic import write_text
    from cellmapseg.report.probe import caching_html, memory_html

    write_text(out_memory, memory_html(_read_json(memory)))
    write_text(out_caching, caching_html(_read_json(caching)))


def stage_compare(cfg: Config, results: Path, out_dir: Path) -> None:
    """results/comparison.{csv,md,html,png,rst}: every configured model, missing ones marked."""
    from cellmapseg.report.comparison import write_comparison

    frame = write_comparison(results, list(cfg.models), out_dir)
    log.info("comparison of %d models (%d missing) in %s", len(frame),
             int((frame["status"] != "ok").sum()), out_dir)


# --- command line ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellmapseg", description=__doc__)
    p.add_argument(
        "-c", "--config", action="append", default=None, metavar="YAML",
        help="config file(s), later ones merged over earlier ones (default: config/config.yaml)",
    )
    p.add_argument("--log", default=None, help="also write the log to this file")
    sub = p.add_subparsers(dest="stage", required=True)

    s = sub.add_parser("synthetic", help="generate the embedded CellMap-like dataset")
    s.add_argument("--out-dir", type=Path, default=Path("results/data/synthetic"))
    s = sub.add_parser("inventory", help="validate the datalist and write the crop inventory")
    s.add_argument("--out", type=Path, default=Path("results/data/inventory.csv"))
    s.add_argument("--workers", type=int, default=1)
    s = sub.add_parser("probe", help="measure caching strategies' memory with N ranks")
    s.add_argument("--inventory", type=Path, default=Path("results/data/inventory.csv"))
    s.add_argument("--out", type=Path, default=Path("results/probe/memory.json"))
    s = sub.add_parser("select-caching", help="choose the caching strategy from the probe")
    s.add_argument("--memory", type=Path, default=Path("results/probe/memory.json"))
    s.add_argument("--out", type=Path, default=Path("results/probe/caching_strategy.json"))
    s = sub.add_parser("train", help="train one model config (torchrun, resumable)")
    s.add_argument("--model", required=True)
    s.add_argument("--inventory", type=Path, default=Path("results/data/inventory.csv"))
    s.add_argument("--caching", type=Path, default=Path("results/probe/caching_strategy.json"))
    s.add_argument("--out", type=Path, default=None, help="default: results/{model}/train")
    s.add_argument("--threads", type=int, default=None)
    s = sub.add_parser("predict", help="predict crops with a model's best checkpoint (Zarr)")
    s.add_argument("--model", required=True)
    s.add_argument("--inventory", type=Path, default=Path("results/data/inventory.csv"))
    s.add_argument("--crops", nargs="*", default=None,
                   help="crop names or ids (default: validation)")
    s.add_argument("--out", type=Path, default=None,
                   help="default: results/{model}/predictions/predictions.zarr")
    s = sub.add_parser("evaluate", help="score predictions with the challenge's metrics")
    s.add_argument("--model", required=True)
    s.add_argument("--inventory", type=Path, default=Path("results/data/inventory.csv"))
    s.add_argument("--crops", nargs="*", default=None)
    s = sub.add_parser("report-model", help="one model's report figures")
    s.add_argument("--model", required=True)
    s.add_argument("--inventory", type=Path, default=Path("results/data/inventory.csv"))
    sub.add_parser("report-probe", help="the memory probe and caching decision as HTML")
    s = sub.add_parser("compare", help="the comparison table and figure of all models "
                                       "(missing ones marked)")
    s.add_argument("--results", type=Path, default=Path("results"))
    return p


def _run(args: argparse.Namespace, cfg: Config) -> None:
    stages: dict[str, Callable[[], Any]] = {
        "synthetic": lambda: stage_synthetic(cfg, args.out_dir),
        "inventory": lambda: stage_inventory(cfg, args.out, args.workers),
        "probe": lambda: stage_probe(cfg, args.inventory, args.out),
        "select-caching": lambda: stage_select_caching(cfg, args.memory, args.out),
        "predict": lambda: stage_predict(
            cfg, args.model, Path(f"results/{args.model}/train/summary.json"), args.inventory,
            args.out or Path(f"results/{args.model}/predictions/predictions.zarr"), args.crops),
        "evaluate": lambda: stage_evaluate(
            cfg, Path(f"results/{args.model}/predictions/predictions.zarr"), args.inventory,
            Path(f"results/{args.model}/eval.csv"),
            Path(f"results/{args.model}/eval_summary.json"), args.crops),
        "train": lambda: stage_train(cfg, args.model, args.inventory, args.caching,
                                     args.out or Path(f"results/{args.model}/train"),
                                     args.threads),
        "report-model": lambda: stage_report_model(
            args.model, Path(f"results/{args.model}/train/metrics.csv"),
            Path(f"results/{args.model}/eval_summary.json"),
            Path(f"results/{args.model}/predictions/predictions.zarr"), args.inventory,
            model_report_paths(Path(f"results/{args.model}/report"))),
        "report-probe": lambda: stage_report_probe(
            Path("results/probe/memory.json"), Path("results/probe/caching_strategy.json"),
            Path("results/probe/report/memory.html"), Path("results/probe/report/caching.html")),
        "compare": lambda: stage_compare(cfg, args.results, args.results),
    }
    stages[args.stage]()


def model_report_paths(folder: Path) -> dict[str, Path]:
    return {"curves": folder / "training_curves.png", "scores": folder / "scores.png",
            "examples": folder / "examples.png"}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    setup_logging(args.log)
    with bad_input_exits():
        cfg = config_mod.load(*(args.config or ["config/config.yaml"]))
        _run(args, cfg)


def from_snakemake(snakemake: Any, allocation: bool = False) -> Config:  # noqa: ANN401
    """Config for a workflow/scripts wrapper: logging to the rule's log, validated config.
    allocation=True (train, memory probe): the world size is the GPUs the job was given
    (resources.gpu), not train.gpus, when the two differ on a GPU run."""
    setup_logging(snakemake.log[0] if len(snakemake.log) else None)
    cfg = config_mod.from_dict(dict(snakemake.config))
    if not allocation:
        return cfg
    gpus = int(getattr(snakemake.resources, "gpu", cfg.train.gpus))
    allocated = config_mod.with_allocation(cfg, gpus)
    log.info("allocation: resources.gpu = %d, train.gpus = %d -> world size %d", gpus,
             cfg.train.gpus, allocated.train.world_size)
    return allocated


if __name__ == "__main__":
    main()
