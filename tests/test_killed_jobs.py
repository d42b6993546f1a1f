"""Killed jobs through Snakemake: kill -9 mid-training, mid-prediction and mid-scoring, rerun.

A tiny override of the embedded default runs the workflow up to the caching decision once
(`base`). From one copy of it, `results/tiny/eval.csv` runs uninterrupted: the reference (in
the background, beside the killed run, to save time). Another copy is run with the same command
and SIGKILLed three times: in training during epoch 2 (just after epoch 1 is checkpointed), in
prediction once Snakemake has finished the first crop's job (the rerun must predict only the
others), and in scoring once a crop's scoring has started. Two kinds of kill:

- the job only (training, scoring): every process under Snakemake (the stage's script, torchrun,
  the ranks) gets SIGKILL, as from the OOM killer or a node's job kill; Snakemake itself lives,
  reports the rule failed and exits non-zero, and the rerun is the same command, nothing else;
- the whole run (prediction): the process group, Snakemake included, as when the login session
  dies; the ranks go too, through their parent-death signal. The rerun is the same command
  after `--unlock`, which Snakemake requires once its own process was killed: its lock files
  hold no process id, so it cannot tell a dead run from a live one.

The workflow profile sets rerun-incomplete. Training must resume from checkpoints/last.pt and
end at the reference's step count with identical weights; predictions.zarr and eval.csv must
equal the reference's, and no process of a killed run may outlive the kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from conftest import ONTOLOGY

from cellmapseg.data.inventory import validation_crop_ids
from cellmapseg.models import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TARGET = "results/tiny/eval.csv"
EPOCHS = 3
OVERRIDE = f"""
data:
  synthetic: {{n_datasets: 1, n_train: 3, n_val: 2, shape: [24, 24, 24],
              large_shape: [32, 32, 32], small_shape: [12, 24, 24]}}
caching: {{store_dir: shm, probe_crops: 2, probe_patches: 1}}
train: {{cpu_ranks: 1, num_workers: 0}}
inference: {{block_size: 32}}
models:
  tiny:
    network: {{type: segresnet, init_filters: 4, blocks_down: [1, 1, 1]}}
    ds_weights: [1.0]
    roi_size: [16, 16, 16]
    num_samples: 2
    batch_size: 1
    train_sub_epochs: 2
    epochs: {EPOCHS}
    eval_epochs: {EPOCHS}
    mixup_p: 0.5
"""


def command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(ROOT / "config" / "config.yaml"),
            str(workdir / "override.yaml"), "--cores", "2", *extra]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    # cwd=ROOT: Snakemake picks up the workflow profile (profiles/default: rerun-incomplete)
    return subprocess.run(command(workdir, *args), capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def complete(workdir: Path, target: str = TARGET) -> None:
    proc = snakemake(workdir, target)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def survivors(workdir: Path) -> list[int]:
    """Processes still working in `workdir` (a stage, torchrun, a rank, a loader worker)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == workdir.resolve():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first), from the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        found += kids
        todo += kids
    return found


def kill_job_only(proc: subprocess.Popen, out: Path, what: str) -> None:
    """SIGKILL every process under Snakemake; Snakemake must see its job fail and exit."""
    for pid in descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    code = proc.wait(timeout=120)
    log = out.read_text()
    assert code != 0 and "Error in rule" in log, f"{what}: exit {code}\n{log[-3000:]}"


def workdir_locks(workdir: Path) -> list[Path]:
    folder = workdir / ".snakemake" / "locks"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def run_and_kill(workdir: Path, ready: Callable[[], bool], what: str, job_only: bool) -> None:
    """Start the target and SIGKILL it once `ready()`: the job's processes only, or the whole
    process group with Snakemake (then `--unlock`). Nothing may survive the kill."""
    start = time.perf_counter()
    out = workdir / "killed-run.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen(command(workdir, TARGET), cwd=ROOT, start_new_session=True,
                                stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    try:
        while not ready():
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)
        if job_only:
            kill_job_only(proc, out, what)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.time() + 20
    while survivors(workdir) and time.time() < deadline:
        time.sleep(0.2)
    assert not survivors(workdir), f"processes outlived the kill of {what}"
    if job_only:
        locks = workdir_locks(workdir)
        assert not locks, f"Snakemake left its locks after a failed job: {locks}"
    else:
        assert workdir_locks(workdir), "a killed Snakemake leaves its locks"
        unlock = snakemake(workdir, "--unlock")
        assert unlock.returncode == 0, unlock.stderr[-2000:]
    print(f"killed at {what} ({'job only' if job_only else 'whole run'}) after "
          f"{time.perf_counter() - start:.1f} s")


def copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)  # copy2: modification times are kept
    return dest


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Data, inventory, memory probe and caching decision of the tiny override."""
    workdir = tmp_path_factory.mktemp("killed") / "base"
    workdir.mkdir()
    (workdir / "override.yaml").write_text(OVERRIDE)
    complete(workdir, "results/probe/caching_strategy.json")
    return workdir


class Background:
    """The reference run, started now, finished on demand."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.log = workdir, workdir / "snakemake.out"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(command(workdir, TARGET), cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def done(self) -> Path:
        self.proc.wait(timeout=600)
        assert self.proc.returncode == 0, self.log.read_text()[-4000:]
        return self.workdir

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_same_predictions(ref: Path, run: Path) -> None:
    a = zarr.open_group(str(ref / "results/tiny/predictions/predictions.zarr"), mode="r")
    b = zarr.open_group(str(run / "results/tiny/predictions/predictions.zarr"), mode="r")
    assert sorted(a.group_keys()) == sorted(b.group_keys())
    for crop in a.group_keys():
        assert sorted(b[crop].array_keys()) == sorted(ONTOLOGY.names)  # atomic and groups
        for name in ONTOLOGY.names:
            np.testing.assert_array_equal(a[crop][name][:], b[crop][name][:], f"{crop}/{name}")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Object at .snakemake_timestamp")
def test_killed_training_prediction_and_scoring_resume_to_the_reference(base):
    run = copy(base, base.parent / "run")
    background = Background(copy(base, base.parent / "reference"))
    try:
        killed_three_times(run, background)
    finally:
        background.stop()


def killed_three_times(run: Path, background: Background) -> None:
    train = run / "results/tiny/train"
    preds = run / "results/tiny/predictions"
    ref_train = background.workdir / "results/tiny/train"

    # 1. training, a moment after epoch 1 is checkpointed: inside epoch 2 (an epoch takes
    #    from 0.4 s on an idle machine to several seconds under load)
    seen: list[float] = []

    def in_epoch_2() -> bool:
        last = train / "checkpoints/last.pt"
        if not seen and last.is_file() and checkpoint.load(last)["epoch"] >= 1:
            seen.append(time.time())
        return bool(seen) and time.time() - seen[0] > 0.2

    run_and_kill(run, in_epoch_2, "training, epoch 2", job_only=True)
    assert not (train / "summary.json").exists()
    assert 1 <= checkpoint.load(train / "checkpoints/last.pt")["epoch"] < EPOCHS

    # 2. rerun: training resumes and finishes; the whole run is killed once Snakemake has
    #    finished the first crop's prediction job (one job per crop: a kill costs one crop)
    out = run / "killed-run.out"

    def crop_predicted() -> bool:
        return out.is_file() and "(Rule: predict_crop)" in out.read_text()

    run_and_kill(run, crop_predicted, "the first predicted crop", job_only=False)
    reference = background.done()
    assert "resumed tiny" in (train / "train.log").read_text()
    summary = json.loads((train / "summary.json").read_text())
    assert summary["steps"] == json.loads((ref_train / "summary.json").read_text())["steps"]
    assert summary["epochs"] == EPOCHS
    a, b = (pd.read_csv(d / "metrics.csv") for d in (ref_train, train))
    assert list(b["epoch"]) == list(range(1, EPOCHS + 1)) and list(b["step"]) == list(a["step"])
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"], check_exact=True)
    for name in ("last.pt", "best.pt"):  # same weights as the uninterrupted run, bit for bit
        ours, theirs = (checkpoint.load(d / "checkpoints" / name) for d in (train, ref_train))
        assert tensors_equal(ours["model"], theirs["model"]), name
    assert not (preds / "predictions.zarr").exists() and not (preds / "manifest.json").exists()
    crops = validation_crop_ids(run / "results/data/inventory.csv")
    done = [c for c in crops if (preds / "crops" / f"{c}.json").is_file()]
    assert done, "no crop's prediction survived the kill"

    # 3. rerun: only the crops not done are predicted; scoring killed once it has started
    run_and_kill(run, lambda: any((run / "results/tiny/eval").glob("*.config.yaml")),
                 "scoring", job_only=True)
    assert out.read_text().count("rule predict_crop:") == len(crops) - len(done)
    assert all((preds / "crops" / f"{c}.json").is_file() for c in done)
    assert not (run / "results/tiny/eval.csv").exists(), "scoring finished before the kill"
    assert not (run / "results/tiny/eval_summary.json").exists()

    # 4. the same command completes; everything equals the uninterrupted run
    complete(run)
    assert_same_predictions(reference, run)
    for folder in ("predictions", "predictions/crops", "eval"):  # no scratch left
        assert sorted(p.name for p in (run / "results/tiny" / folder).iterdir()) == sorted(
            p.name for p in (reference / "results/tiny" / folder).iterdir()), folder
    pd.testing.assert_frame_equal(pd.read_csv(reference / TARGET), pd.read_csv(run / TARGET),
                                  check_exact=True)
    assert (json.loads((run / "results/tiny/eval_summary.json").read_text())
            == json.loads((reference / "results/tiny/eval_summary.json").read_text()))


CHILD = """
import os, subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True)
print(grandchild.pid, flush=True)
grandchild.wait()
"""
RANK = """
import time
from cellmapseg.runtime.torchrun import die_with_parent
die_with_parent()
print("ready", flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:  # a killed process may stay a zombie until init reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_rank_dies_with_the_torchrun_that_started_it():
    """The ranks' own session (torchrun's start_new_session) is out of reach of a process-group
    kill; die_with_parent makes the kernel kill a rank when its parent dies."""
    parent = subprocess.Popen([sys.executable, "-c", CHILD, RANK], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "TORCHELASTIC_RUN_ID": "test"})
    rank = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "ready"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while alive(rank) and time.time() < deadline:
        time.sleep(0.05)
    survived = alive(rank)
    if survived:
        os.kill(rank, signal.SIGKILL)
    assert not survived, "the rank outlived its parent"
