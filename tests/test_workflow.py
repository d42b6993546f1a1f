"""The Snakemake skeleton: lint-clean, and the data stages run on the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str, overrides: str | None = None
              ) -> subprocess.CompletedProcess:
    """Run the workflow in `workdir` on the embedded default (plus an optional YAML override)."""
    configs = [str(ROOT / "config" / "config.yaml")]
    if overrides:
        (workdir / "override.yaml").write_text(overrides)
        configs.append(str(workdir / "override.yaml"))
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"),
        "--directory", str(workdir), "--configfile", *configs, "--cores", "2", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def test_lint_reports_nothing():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_data_and_probe_stages_run_on_the_embedded_default(probe_stages):
    results = probe_stages / "results"
    inventory = pd.read_csv(results / "data/inventory.csv")
    assert set(inventory["split"]) == {"training", "validation"}
    for path in ("data/synthetic/train_crop_manifest.csv",
                 "data/synthetic/test_crop_manifest.csv",
                 "data/synthetic/train_crop_manifest.config.yaml", "data/zarr/datalist.json",
                 "data/zarr/datalist.config.yaml", "data/inventory.config.yaml",
                 "probe/memory.config.yaml", "probe/caching_strategy.config.yaml"):
        assert (results / path).is_file(), path
    memory = json.loads((results / "probe/memory.json").read_text())
    assert set(memory["measurements"]) == {"A", "B", "C", "D"}
    assert memory["spec_cache"]["cached_bytes_per_voxel"] == pytest.approx(60.0)
    assert memory["data"]["crops"] == len(inventory)
    choice = json.loads((results / "probe/caching_strategy.json").read_text())
    assert choice["strategy"] == "B" and choice["requested"] == "auto"
    assert set(choice["estimates"]) == {"A", "B", "C", "D", "E", "spec"}
    assert choice["estimates"]["E"]["feasible"] is False
    again = snakemake(probe_stages, "-n", "results/probe/caching_strategy.json")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_forced_strategy_that_cannot_fit_stops_before_training(tmp_path, probe_stages):
    (tmp_path / "results").mkdir()  # the data stages are done already: reuse them
    (tmp_path / "results/data").symlink_to(probe_stages / "results/data")
    proc = snakemake(tmp_path, "results/probe/caching_strategy.json",
                     overrides="caching: {strategy: A, ram_fraction: 0.0001}\n")
    assert proc.returncode != 0
    assert "error: caching: strategy A (forced by caching.strategy) cannot be used" in proc.stderr
    assert not (tmp_path / "results/probe/caching_strategy.json").exists()


def test_bad_config_stops_the_workflow_with_one_line(tmp_path):
    proc = snakemake(tmp_path, "-n", "--config", "seed=abc")
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")]
    assert lines == ["error: config: key 'seed' has value 'abc' of type string; expected integer"]


def _resources(dry_run: str, rule: str) -> dict[str, str]:
    block = dry_run[dry_run.index(f"rule {rule}:"):]
    line = next(ln for ln in block.splitlines() if ln.strip().startswith("resources:"))
    return dict(kv.split("=", 1) for kv in line.split(":", 1)[1].strip().split(", "))


@pytest.mark.parametrize(("allocation", "wanted", "absent"), [
    ("{gpus: 2, cpus: 21, mem_gb: 300}",
     {"gpu": "2", "nodes": "1", "cpus_per_task": "21", "mem_mb": str(300 * 1024)}, ("gres",)),
    # more nodes: GPUs per node as gres (--gpus would be the job's total)
    ("{gpus: 4, nodes: 2}", {"gres": "gpu:4", "nodes": "2", "mem_mb": str(16 * 1024)},
     ("gpu", "cpus_per_task")),
])
def test_the_train_rule_asks_for_the_models_allocation(tmp_path, allocation, wanted, absent):
    override = ("train: {allocation: " + allocation + "}\n"
                "models: {swinunetr: {allocation: {mem_gb: 64}}}\n")
    proc = snakemake(tmp_path, "-n", "results/segresnet/train/summary.json",
                     "results/swinunetr/train/summary.json", overrides=override)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    jobs = out.split("rule train:")[1:]
    seg = _resources("rule train:" + next(j for j in jobs if "segresnet" in j.split("rule")[0]),
                     "train")
    swin = _resources("rule train:" + next(j for j in jobs if "swinunetr" in j.split("rule")[0]),
                      "train")
    assert {k: seg[k] for k in wanted} == wanted and not set(absent) & set(seg)
    assert swin["mem_mb"] == str(64 * 1024)  # a model's own key over train.allocation's
    probe = _resources(out, "memory_probe")  # the largest job's allocation
    assert probe["mem_mb"] == str(max(64, int(wanted["mem_mb"]) // 1024) * 1024)
