"""The Snakemake skeleton: lint-clean, and the data stages run on the embedded default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(ROOT / "config" / "config.yaml"),
        "--cores", "2", *args,
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
def test_inventory_target_builds_dataset_and_inventory(tmp_path):
    proc = snakemake(tmp_path, "results/data/inventory.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    inventory = pd.read_csv(tmp_path / "results/data/inventory.csv")
    assert set(inventory["split"]) == {"training", "validation"}
    assert (tmp_path / "results/data/synthetic/datalist.json").is_file()
    assert (tmp_path / "results/data/inventory.config.yaml").is_file()
    assert (tmp_path / "results/data/synthetic/config.yaml").is_file()
    again = snakemake(tmp_path, "results/data/inventory.csv")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_bad_config_stops_the_workflow_with_one_line(tmp_path):
    proc = snakemake(tmp_path, "-n", "--config", "seed=abc")
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")]
    assert lines == ["error: config: key 'seed' has value 'abc' of type string; expected integer"]
