"""The Snakemake skeleton: lint-clean, and the data stages run on the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from slurm_cluster import DAG_CONFIGS

ROOT = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str, overrides: str | None = None,
              configs: tuple[Path, ...] = (ROOT / "config" / "config.yaml",)
              ) -> subprocess.CompletedProcess:
    """Run the workflow in `workdir` on the embedded default (or `configs`), plus an optional
    YAML override."""
    configs = [str(c) for c in configs]
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
    again = snakemake(probe_stages, "-n", "results/probe/caching_strategy.json",
                      configs=DAG_CONFIGS)  # what made them (conftest.probe_stages)
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


def test_the_train_rule_asks_for_each_models_allocation(tmp_path):
    override = ("train: {allocation: {gpus: 2, cpus: 21, mem_gb: 300}}\n"
                "models: {swinunetr: {allocation: {mem_gb: 64}},\n"
                "         flexunet_resnet34: {allocation: {gpus: 4, nodes: 2}}}\n")
    proc = snakemake(tmp_path, "-n", *(f"results/{m}/train/summary.json" for m in
                                       ("segresnet", "swinunetr", "flexunet_resnet34")),
                     overrides=override)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    jobs = {next(m for m in ("segresnet", "swinunetr", "flexunet_resnet34")
                 if f"results/{m}/train" in job.split("resources:")[0]):
            _resources("rule train:" + job, "train") for job in out.split("rule train:")[1:]}
    assert jobs["segresnet"] == {**jobs["segresnet"], "gpu": "2", "nodes": "1",
                                 "cpus_per_task": "21", "mem_mb": str(300 * 1024)}
    assert "gres" not in jobs["segresnet"]
    assert jobs["swinunetr"]["mem_mb"] == str(64 * 1024)  # a model's own key over train's
    # more nodes: GPUs per node as gres (--gpus would be the job's total)
    flex = jobs["flexunet_resnet34"]
    assert (flex["gres"], flex["nodes"], flex["cpus_per_task"]) == ("gpu:4", "2", "21")
    assert "gpu" not in flex
    probe = _resources(out, "memory_probe")  # the largest job's allocation, on one node
    assert (probe["gpu"], probe["cpus_per_task"], probe["mem_mb"]) == ("4", "21",
                                                                       str(300 * 1024))
