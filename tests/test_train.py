"""Training: a 2-rank gloo DDP run, resume after a kill, checkpoints, outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_model

from cellmapseg.config import from_dict
from cellmapseg.data.inventory import write_inventory
from cellmapseg.errors import InputError
from cellmapseg.models import checkpoint
from cellmapseg.synthetic.generate import generate

TINY_MODEL = tiny_model(epochs=4, eval_epochs=2, lr=0.003, mixup_p=0.5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny synthetic dataset, its inventory and a caching decision (strategy A)."""
    root = tmp_path_factory.mktemp("train")
    syn = {"n_train": 4, "n_val": 2, "shape": [24, 24, 24], "large_shape": [32, 32, 32],
           "small_shape": [12, 24, 24], "seed": 5}
    raw = {"data": {"synthetic": syn}}
    made = from_dict(raw)
    datalist = generate(made.data.synthetic, (8.0,) * 3, root / "data", made.classes)
    raw["data"]["datalist"] = str(datalist)
    write_inventory(from_dict(raw), root / "inventory.csv")
    selection = {"strategy": "A", "store_dir": str(root / "shm"), "disk_dir": str(root / "disk"),
                 "d_threshold_mb": 500}
    (root / "caching.json").write_text(json.dumps(selection))
    return root, raw


def write_config(root: Path, raw: dict, cpu_ranks: int = 1, **model) -> Path:
    cfg = {**raw, "train": {"cpu_ranks": cpu_ranks, "num_workers": 0},
           "models": {"tiny": {**TINY_MODEL, **model}}}
    path = root / f"config_{cpu_ranks}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_cmd(root: Path, config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cellmapseg", "-c", str(config), "train", "--model", "tiny",
            "--inventory", str(root / "inventory.csv"), "--caching", str(root / "caching.json"),
            "--out", str(out), "--threads", "2"]


def run_training(root: Path, config: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(root, config, out), capture_output=True, text=True)


@pytest.mark.slow
def test_two_rank_gloo_ddp_run_trains_and_writes_its_outputs(setup, tmp_path):
    root, raw = setup
    out = tmp_path / "run"
    proc = run_training(root, write_config(tmp_path, raw, cpu_ranks=2, epochs=2), out)
    assert proc.returncode == 0, (proc.stderr + (out / "train.log").read_text())[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    # 4 crops x 2 sub-epochs = 8 items over 2 ranks, batch 2 -> 2 steps per epoch
    assert summary["steps"] == 4
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2] and metrics["train_loss"].notna().all()
    assert metrics["val_dice_mean"].notna().iloc[-1]
    assert (out / "config.yaml").is_file() and (out / "checkpoints/best.pt").is_file()
    state = checkpoint.load(out / "checkpoints/last.pt", "tiny")
    assert state["epoch"] == 2 and len(state["rng_cpu"]) == 2


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(setup, tmp_path):
    root, raw = setup
    config = write_config(tmp_path, raw, epochs=4)
    whole = tmp_path / "whole"
    assert run_training(root, config, whole).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(root, config, killed), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill -9 once epoch 2 is checkpointed
        last = killed / "checkpoints/last.pt"
        if last.is_file() and checkpoint.load(last)["epoch"] >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    assert proc.returncode != 0, "training finished before it could be killed"
    assert not (killed / "summary.json").exists()
    epoch_at_kill = checkpoint.load(killed / "checkpoints/last.pt")["epoch"]
    assert 2 <= epoch_at_kill < 4

    again = run_training(root, config, killed)
    assert again.returncode == 0, again.stderr[-2000:]
    a = pd.read_csv(whole / "metrics.csv")
    b = pd.read_csv(killed / "metrics.csv")
    assert list(b["epoch"]) == [1, 2, 3, 4]
    assert json.loads((killed / "summary.json").read_text())["steps"] == json.loads(
        (whole / "summary.json").read_text())["steps"]
    assert list(b["step"]) == list(a["step"])
    # Same seed, per-item data RNG and restored torch RNG: the curve continues where it stopped.
    # Tolerance 1e-4 relative covers float reduction order; on CPU it is usually exact.
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"], rtol=1e-4)
    pd.testing.assert_series_equal(a["val_dice_mean"], b["val_dice_mean"], rtol=1e-4)
    assert "resumed tiny" in (killed / "train.log").read_text()


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"model_name": "other", "network": {"type": "segresnet"},
                           "model": {"w": torch.zeros(2)}})
    with pytest.raises(InputError, match="written for model 'other', not 'tiny'"):
        checkpoint.load(path, "tiny")
    with pytest.raises(InputError, match="network config"):
        checkpoint.load(path, "other", {"type": "swinunetr"})


def test_truncated_or_missing_checkpoint_fails_in_one_line(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"model_name": "m", "model": {"w": torch.zeros(1000)}})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InputError, match="truncated or corrupt"):
        checkpoint.load(path)
    with pytest.raises(InputError, match="file not found"):
        checkpoint.load(tmp_path / "nope.pt")


def test_checkpoints_load_with_weights_only(tmp_path, monkeypatch):
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real(*a, **k))
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"model_name": "m", "model": {"w": torch.ones(1)}})
    checkpoint.load(path)
    assert calls and all(k.get("weights_only") is True for k in calls)


def test_batch_larger_than_the_data_allows_stops_before_training(setup, tmp_path):
    root, raw = setup
    proc = run_training(root, write_config(tmp_path, raw, batch_size=64), tmp_path / "x")
    assert proc.returncode != 0
    assert "error: config: key 'models.tiny.batch_size' = 64 is larger than the data allows" in (
        proc.stderr)
    assert not (tmp_path / "x" / "train.log").exists()


@pytest.mark.slow
def test_gradient_accumulation_takes_one_optimizer_step_per_group(setup, tmp_path):
    root, raw = setup
    out = tmp_path / "accum"
    # 4 crops x 2 sub-epochs = 8 items, batch 2 -> 4 micro-batches -> 2 steps with accumulation 2
    proc = run_training(root, write_config(tmp_path, raw, epochs=1, eval_epochs=1,
                                           grad_accumulation=2), out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_steps_per_epoch_follow_ranks_batch_and_accumulation():
    from cellmapseg.train.data import steps_per_epoch

    assert steps_per_epoch(20, 1, 2, 1) == 10
    assert steps_per_epoch(20, 2, 2, 1) == 5
    assert steps_per_epoch(21, 2, 2, 1) == 5  # the sampler pads 21 to 2 x 11; 11 // 2 = 5
    assert steps_per_epoch(20, 1, 2, 3) == 3
    assert steps_per_epoch(3, 2, 2, 1) == 1


@pytest.mark.slow
def test_a_changed_config_does_not_resume_an_old_checkpoint(setup, tmp_path):
    root, raw = setup
    out = tmp_path / "changed"
    assert run_training(root, write_config(tmp_path, raw, epochs=1), out).returncode == 0
    proc = run_training(root, write_config(tmp_path, raw, epochs=2, lr=0.01), out)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    assert "written under a different configuration (changed: model.epochs, model.lr)" in lines[0]


@pytest.mark.slow
def test_a_run_resumed_under_another_world_size_stops_in_one_line(setup, tmp_path):
    root, raw = setup
    out = tmp_path / "world"
    assert run_training(root, write_config(tmp_path, raw, epochs=1), out).returncode == 0
    proc = run_training(root, write_config(tmp_path, raw, cpu_ranks=2, epochs=1), out)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    assert "written by 1 rank(s), this run has 2" in lines[0]
    assert "last.pt" in lines[0]


def test_rank_threads_never_exceed_the_usable_cpus(monkeypatch):
    from cellmapseg.runtime.torchrun import threads_per_rank

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert threads_per_rank(63, 1) == 2  # a Slurm job granted more CPUs than the machine has
    assert threads_per_rank(None, 1) == 2 and threads_per_rank(1, 1) == 1
    assert threads_per_rank(63, 7) == 1
