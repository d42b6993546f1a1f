"""More than one node for a model: one torchrun agent per node (srun), meeting at a c10d
rendezvous. Here the two "nodes" are two agents on this host, started by a stand-in for srun
that runs its command once per node, as srun --ntasks-per-node=1 does."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_model, tiny_training_inputs

from cellmapseg.errors import InputError
from cellmapseg.models import checkpoint
from cellmapseg.runtime.torchrun import launch, srun_env

FAKE_SRUN = """#!{python}
import json, os, subprocess, sys
args, opts = sys.argv[1:], {{}}
while args and args[0].startswith("--"):
    key, _, value = args.pop(0)[2:].partition("=")
    opts[key] = value
with open(os.environ["FAKE_SRUN_LOG"], "a") as fh:
    fh.write(json.dumps({{"opts": opts, "argv": args,
                         "slurm_env": sorted(k for k in os.environ if k.startswith("SLURM_"))}})
             + "\\n")
nodes = int(opts["nodes"])
procs = [subprocess.Popen(args, env={{**os.environ, "SLURM_NODEID": str(i)}})
         for i in range(nodes)]
sys.exit(max(p.wait() for p in procs))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    raw = tiny_training_inputs(root, data_seed=11)
    srun = root / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text(FAKE_SRUN.format(python=sys.executable))
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    return root, raw


def train(root: Path, raw: dict, out: Path, ranks: int, nodes: int,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cfg = {**raw, "train": {"cpu_ranks": ranks, "num_workers": 0,
                            "allocation": {"nodes": nodes}},
           "models": {"tiny": tiny_model(epochs=2, eval_epochs=1, lr=0.003)}}
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "cellmapseg", "-c", str(config), "train", "--model", "tiny",
           "--inventory", str(root / "inventory.csv"), "--caching", str(root / "caching.json"),
           "--out", str(out), "--threads", "2"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_two_nodes_of_one_rank_train_exactly_as_one_node_of_two(data, tmp_path):
    root, raw = data
    one = train(root, raw, tmp_path / "one", ranks=2, nodes=1)
    assert one.returncode == 0, one.stderr[-3000:]
    log = tmp_path / "srun.jsonl"
    env = {**os.environ, "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1",
           "FAKE_SRUN_LOG": str(log)}
    two = train(root, raw, tmp_path / "two", ranks=1, nodes=2, env=env)
    assert two.returncode == 0, two.stderr[-3000:] + (tmp_path / "two/train.log").read_text()
    # one srun step, one agent per node, rendezvous over c10d under the job's id
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert call["opts"]["nodes"] == call["opts"]["ntasks"] == "2"
    assert call["opts"]["ntasks-per-node"] == "1" and "overlap" in call["opts"]
    agent = call["argv"]
    assert "--nnodes=2" in agent and "--nproc_per_node=1" in agent
    assert "--rdzv-backend=c10d" in agent and "--rdzv-id=4242" in agent
    assert "SLURM_NTASKS" not in call["slurm_env"]  # the step's own sizes are not inherited
    # the same world size, the same steps, the same losses and the same weights
    s1, s2 = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two"))
    assert s1["world_size"] == s2["world_size"] == 2
    assert s1["steps"] == s2["steps"] > 0 and s1["epochs"] == s2["epochs"] == 2
    m1, m2 = (pd.read_csv(tmp_path / r / "metrics.csv") for r in ("one", "two"))
    assert m1["train_loss"].tolist() == m2["train_loss"].tolist()
    w1, w2 = (checkpoint.load(tmp_path / r / "checkpoints/last.pt", "tiny")["model"]
              for r in ("one", "two"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_more_nodes_than_the_slurm_job_has_is_one_line():
    with pytest.raises(InputError, match=r"2 nodes .* need a Slurm job of 2 nodes; this job "
                                        r"has no Slurm allocation"):
        launch(2, 1, "m", [], env={})
    with pytest.raises(InputError, match="this job has 1"):
        launch(2, 1, "m", [], env={"SLURM_JOB_NUM_NODES": "1"})


def test_one_node_is_torchrun_standalone_and_keeps_the_environment():
    cmd, env = launch(1, 4, "m", ["--x", "1"], env={"SLURM_NTASKS": "1", "A": "b"})
    assert "--standalone" in cmd and "--nproc_per_node=4" in cmd
    assert env == {"SLURM_NTASKS": "1", "A": "b"}


def test_a_nested_srun_keeps_the_job_identity_only():
    env = srun_env({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_CPUS_PER_TASK": "8",
                    "SRUN_CPUS_PER_TASK": "8", "PATH": "/bin"})
    assert env == {"SLURM_JOB_ID": "7", "PATH": "/bin"}


def test_a_two_node_config_outside_slurm_stops_before_writing_anything(data, tmp_path):
    root, raw = data
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = train(root, raw, tmp_path / "out", ranks=1, nodes=2, env=env)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: config: 2 nodes (allocation.nodes) need a Slurm job of 2 nodes; "
                      "this job has no Slurm allocation (run through profiles/slurm, or set "
                      "nodes to 1)"], proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
