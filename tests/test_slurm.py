"""profiles/slurm against a real Slurm (tests/slurm_cluster.py): the whole embedded-default DAG
through sbatch, the reserved allocation of the GPU rules as sacct records it, and what a user sees
when a job fails, is killed or cannot be submitted.

They run wherever the test Slurm can start (root: it installs Debian's packages when missing);
the session's one embedded-default DAG then goes through sbatch. Elsewhere (not root, or
CELLMAPSEG_SLURM=0) they skip with the reason; with CELLMAPSEG_REQUIRE_SLURM=1 a Slurm that
cannot start is an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from slurm_cluster import (
    DAG_CONFIGS,
    EMBEDDED_CONFIG,
    NODE2,
    NODE_GPUS,
    RESERVED_CORES,
    ROOT,
    TEST_POLLING,
    TEST_SITE,
    SlurmCluster,
    _run_interruptible,
    run_local,
    run_snakemake,
    shared_skip_reason,
    slurm_required,
    snakemake_command,
)

from cellmapseg.config import load
from cellmapseg.data.inventory import validation_crop_ids

pytestmark = pytest.mark.slow

MODELS = sorted(yaml.safe_load(EMBEDDED_CONFIG.read_text())["models"])
GPU_RULES = {"train", "memory_probe"}  # a share of the reserved node (the config's allocation)
# tests/ci_training.yaml's train.allocation: a third of the reserved 63 cores and of the node.
JOB_GPUS, JOB_CPUS, JOB_MEM = 2, 21, "300G"


def _need(cluster: SlurmCluster | None) -> SlurmCluster:
    if cluster is None:
        assert not slurm_required(), "unreachable: shared_cluster() raises when required"
        pytest.skip(f"no test Slurm here: {shared_skip_reason()}")
    return cluster


def _rule(row: dict[str, str]) -> str:
    """The rule of a job from the plugin's --comment (rule_NAME or rule_NAME_wildcards_...)."""
    return re.sub(r"_wildcards_.*$", "", row["Comment"]).removeprefix("rule_")


def _tail(proc: subprocess.CompletedProcess, n: int = 4000) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-n:]}\n--- stderr\n{proc.stderr[-n:]}"


# --- the whole DAG (the session's one run) ----------------------------------------------------

@pytest.fixture(scope="module")
def dag(request, slurm_cluster):
    _need(slurm_cluster)  # skip before the (long) local run when there is no Slurm here
    run = request.getfixturevalue("embedded_dag")
    assert run.via_slurm, run.skip_reason
    assert run.returncode == 0, _tail(run)
    return run


def _dag_rows(dag) -> list[dict[str, str]]:
    """sacct's rows for the jobs this run submitted (other tests share the cluster)."""
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", dag.output))
    rows = [r for r in dag.cluster.sacct() if r["JobID"] in submitted]
    assert len(rows) == len(submitted) > 0
    return rows


def test_whole_dag_runs_through_sbatch_to_the_end(dag):
    ours = _dag_rows(dag)
    bad = [f"{r['JobID']} {r['Comment']}: {r['State']} {r['ExitCode']}" for r in ours
           if r["State"] != "COMPLETED" or r["ExitCode"] != "0:0"]
    assert not bad, "jobs that did not complete:\n" + "\n".join(bad)
    rules = [_rule(r) for r in ours]
    for rule in ("synthetic_zarr", "convert", "inventory", "memory_probe", "select_caching",
                 "predict_test", "submit"):  # the Zarr route, one test-crop job and the zip
        assert rules.count(rule) == 1, rule
    assert rules.count("train") == len(MODELS)
    crops = validation_crop_ids(dag.workdir / "results/data/inventory.csv")
    # one job per (entry, validation crop): networks predict, derived entries are derived from
    # their kept probabilities, the swept ones are scored at every tuning threshold
    cfg = load(*DAG_CONFIGS)
    for rule, entries in (("predict_crop", cfg.network_entries), ("evaluate_crop", cfg.entries),
                          ("derive_crop", cfg.derived_entries), ("sweep_crop", cfg.swept)):
        assert rules.count(rule) == len(entries) * len(crops), rule
    assert "predict" not in rules and "evaluate" not in rules  # the gathers run locally
    assert "choose" not in rules
    assert all(r["Account"] == TEST_SITE.account for r in ours)
    # Every other job was a Slurm job (only the local rules ran on the submit host), and
    # nothing is left to do.
    assert len(re.findall(r"^(?:rule|checkpoint) \w+:", dag.output, re.M)) == len(ours)
    check = run_local(dag.workdir, "-n", "all", configfiles=DAG_CONFIGS)
    assert check.returncode == 0 and "Nothing to be done" in check.stdout + check.stderr, \
        _tail(check)


def test_gpu_rules_asked_for_the_reserved_allocation(dag):
    rows = [r for r in _dag_rows(dag) if _rule(r) in GPU_RULES]
    assert sorted(_rule(r) for r in rows) == sorted(["memory_probe"] + ["train"] * len(MODELS))
    assert sorted(r["Comment"] for r in rows if _rule(r) == "train") == \
        sorted(f"rule_train_wildcards_{m}" for m in MODELS)  # the plugin's --comment
    for r in rows:
        where = f"{r['Comment']} (job {r['JobID']})"
        assert r["Partition"] == TEST_SITE.gpu_partition, where
        assert r["Reservation"] == TEST_SITE.reservation, where
        assert r["QOS"] == TEST_SITE.qos, where
        assert r["Account"] == TEST_SITE.account, where
        assert f"gres/gpu={JOB_GPUS}" in r["ReqTRES"].split(","), f"{where}: {r['ReqTRES']}"
        assert r["ReqCPUS"] == str(JOB_CPUS), where
        assert r["ReqMem"] == JOB_MEM, where
        if _rule(r) == "train":
            assert r["Timelimit"] == "11-00:00:00", where


def test_the_three_train_jobs_ran_side_by_side_on_the_node(dag):
    # Each asks for a third of the reservation, so Slurm starts all three at once: there is a
    # moment when every one of them is running.
    rows = [r for r in _dag_rows(dag) if _rule(r) == "train"]
    assert len(rows) == len(MODELS) == 3
    starts = [datetime.fromisoformat(r["Start"]) for r in rows]
    ends = [datetime.fromisoformat(r["End"]) for r in rows]
    assert max(starts) < min(ends), [(r["Comment"], r["Start"], r["End"]) for r in rows]
    assert len(rows) * JOB_CPUS <= RESERVED_CORES and len(rows) * JOB_GPUS <= NODE_GPUS


def test_only_gpu_rules_use_the_reservation(dag):
    for r in _dag_rows(dag):
        if _rule(r) in GPU_RULES | {"predict_crop", "predict_test"}:
            assert (r["Partition"], r["Reservation"], r["QOS"]) == (
                TEST_SITE.gpu_partition, TEST_SITE.reservation, TEST_SITE.qos), r
        else:
            assert (r["Partition"], r["Reservation"], r["QOS"]) == (
                TEST_SITE.partition, "", "normal"), r


def test_the_probe_saw_the_allocation_from_inside(dag):
    host = json.loads((dag.workdir / "results/probe/memory.json").read_text())["host"]
    assert host["slurm"]["SLURM_JOB_PARTITION"] == TEST_SITE.gpu_partition, host
    assert host["slurm"]["SLURM_NTASKS"] == "1"  # one task holds every GPU; torchrun forks ranks
    assert host["slurm"]["SLURM_CPUS_PER_TASK"] == str(JOB_CPUS)
    assert host["slurm"]["SLURM_GPUS_ON_NODE"] == str(JOB_GPUS)
    assert len(host["gpus"]["CUDA_VISIBLE_DEVICES"].split(",")) == JOB_GPUS


def test_train_jobs_read_the_allocation_the_config_asked_for(dag):
    # resources.gpu inside the job is the config's allocation (the ranks per node of a GPU
    # config); the embedded default trains on CPU (train.gpus 0), so it keeps its one CPU rank.
    for m in MODELS:
        text = (dag.workdir / f"results/logs/train_{m}.log").read_text()
        assert (f"allocation of {m}: resources.gpu = {JOB_GPUS}, nodes = 1, train.gpus = 0 -> "
                "world size 1 (1 per node)") in text, f"{m}: {text[-2000:]}"


# --- what a user sees when something goes wrong -----------------------------------------------

@pytest.fixture(scope="module")
def cluster(slurm_cluster):
    return _need(slurm_cluster)


@pytest.fixture(scope="module")
def upstream(cluster, probe_stages):
    """A workdir with the data and caching stages done: the inputs of a GPU rule (read-only)."""
    return probe_stages


def test_misspelt_qos_fails_at_submission_with_slurms_message(cluster, upstream, tmp_path):
    wd = tmp_path / "wd"
    (wd / "results").mkdir(parents=True)
    (wd / "results" / "data").symlink_to(upstream / "results" / "data")
    t0 = time.monotonic()
    wrong = dataclasses.replace(TEST_SITE, qos=TEST_SITE.qos + "x")
    proc = run_snakemake(cluster, wd, "results/probe/memory.json", site=wrong, timeout=180)
    assert proc.returncode not in (0, 124), _tail(proc)  # 124: it hung and was interrupted
    assert "Invalid qos specification" in proc.stdout + proc.stderr, _tail(proc)
    assert time.monotonic() - t0 < 120


def test_failed_rule_reports_its_slurm_log(cluster, make_dataset, tmp_path):
    datalist = make_dataset(tmp_path / "data", n_train=2, n_val=1)
    missing = json.loads(datalist.read_text())["training"][1]["image"]
    Path(missing).unlink()
    override = tmp_path / "bad.yaml"
    override.write_text(f"data: {{datalist: {datalist}, synthetic: {{enabled: false}}}}\n")
    wd = tmp_path / "wd"
    proc = run_snakemake(cluster, wd, "results/data/inventory.csv", timeout=300,
                         configfiles=(EMBEDDED_CONFIG, override))
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 124), _tail(proc)
    error = out[out.find("Error in rule inventory:"):]
    assert "SLURM status is: 'FAILED'" in error, _tail(proc)
    logs = re.findall(r"^\s+log: .*?(/\S+/\.snakemake/slurm_logs/rule_inventory/\d+\.log)",
                      error, re.M)
    assert logs, f"the error names no Slurm log\n{_tail(proc)}"
    assert Path(missing).name in Path(logs[0]).read_text()  # the package's one-line error
    assert not (wd / "results/data/inventory.csv").exists()


MTIME_ONLY = (*TEST_POLLING, "--rerun-triggers=mtime")  # "=": the option takes a list


def _copy_upstream(upstream: Path, wd: Path) -> None:
    """The data and caching stages' results, copied (times kept) into a new workdir."""
    for stage in ("data", "probe"):
        shutil.copytree(upstream / "results" / stage, wd / "results" / stage, symlinks=True)


def test_a_two_node_train_job_runs_one_torchrun_agent_on_each_node(cluster, upstream,
                                                                    tmp_path):
    model = "segresnet"
    override = tmp_path / "two_nodes.yaml"
    override.write_text(yaml.safe_dump({
        "models": {model: {"epochs": 1, "eval_epochs": 1, "train_sub_epochs": 1}},
        "train": {"allocation": {"gpus": 1, "cpus": 1, "mem_gb": 4, "nodes": 2}}}))
    wd = (tmp_path / "wd").resolve()
    _copy_upstream(upstream, wd)
    # the reservation holds cores of the first node only: this job runs outside it
    site = dataclasses.replace(TEST_SITE, reservation="")
    proc = run_snakemake(cluster, wd, f"results/{model}/train/summary.json", site=site,
                         timeout=900, configfiles=(*DAG_CONFIGS, override), extra=MTIME_ONLY)
    assert proc.returncode == 0, _tail(proc)
    (job,) = re.findall(r"submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr)
    steps = cluster.run("sacct", "-j", job, "-P", "-n", "-o", "JobID,NodeList,State,ReqTRES")
    rows = [line.split("|") for line in steps.stdout.splitlines()]
    alloc = next(r for r in rows if r[0] == job)
    assert set(alloc[1].split(",")) == {cluster.host, NODE2} and alloc[2] == "COMPLETED"
    assert "gres/gpu=2" in alloc[3].split(","), alloc  # 1 per node (gres), not --gpus=1
    # a step of one task per node (the agents) beside the step the stage ran in
    assert any(set(r[1].split(",")) == {cluster.host, NODE2} and r[2] == "COMPLETED"
               for r in rows if r[0].startswith(f"{job}.") and r[0] != f"{job}.batch"), rows
    summary = json.loads((wd / f"results/{model}/train/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 1
    log = (wd / f"results/logs/train_{model}.log").read_text()
    assert "world size 2 (1 per node)" in log and "(2 node(s) x 1)" in log, log[-2000:]


def _training_ranks(workdir: Path) -> list[int]:
    """PIDs of the training processes (ranks and their loader workers) running in `workdir`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if b"cellmapseg.train.rank" in cmd and Path(os.readlink(proc / "cwd")) == workdir:
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return pids


def test_train_job_killed_at_its_time_limit_keeps_its_checkpoint_and_the_rerun_resumes(
        cluster, upstream, tmp_path):
    model = "segresnet"
    override = tmp_path / "short.yaml"  # 2 short epochs: killed after the 1st, resumed for the 2nd
    short = {"epochs": 2, "eval_epochs": 2, "train_sub_epochs": 1}
    override.write_text(yaml.safe_dump({"models": {model: short}}))
    configs = (EMBEDDED_CONFIG, override)
    wd = (tmp_path / "wd").resolve()
    (wd / "results").mkdir(parents=True)
    for stage in ("data", "probe"):
        (wd / "results" / stage).symlink_to(upstream / "results" / stage)
    target = f"results/{model}/train/summary.json"
    last = wd / f"results/{model}/train/checkpoints/last.pt"
    # mtime only: the shared probe's params were another config's; it must not rerun here
    cmd = snakemake_command(wd, target, configfiles=configs, extra=MTIME_ONLY)
    run = subprocess.Popen(cmd, cwd=ROOT, env=cluster.env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not last.is_file() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert last.is_file(), "no checkpoint before the deadline"
        jobs = [j.split() for j in cluster.run("squeue", "-h", "-o", "%i %k").stdout.splitlines()]
        ids = [j[0] for j in jobs if j[1:] == [f"rule_train_wildcards_{model}"]]
        assert len(ids) == 1, jobs
        # Hold training where it is (so it cannot finish first), then let its time limit run
        # out: Slurm kills the job as it would after 11 days (TIMEOUT, within ~90 s).
        ranks = _training_ranks(wd)
        assert ranks
        for pid in ranks:
            os.kill(pid, signal.SIGSTOP)
        cluster.run("scontrol", "update", f"JobId={ids[0]}", "TimeLimit=0:01")
        out, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            run.communicate(timeout=120)
    assert run.returncode != 0, out[-4000:]
    assert "TIMEOUT" in out, out[-4000:]
    slurm_log = re.findall(r"(/\S+/\.snakemake/slurm_logs/rule_train/\S+/\d+\.log)", out)
    assert slurm_log and Path(slurm_log[-1]).is_file(), out[-4000:]
    assert last.is_file()
    assert not (wd / target).exists()
    assert not _training_ranks(wd), "Slurm left training processes behind"
    again = _run_interruptible(cmd, cluster.env(), 900)  # the same command
    assert again.returncode == 0, _tail(again)
    train_log = (wd / f"results/{model}/train/train.log").read_text()
    assert re.search(rf"resumed {model} from \S+ at epoch 1,", train_log), train_log[-3000:]
    assert json.loads((wd / target).read_text())["epochs"] == 2


# --- when the test Slurm runs (no cluster needed) -----------------------------------------------

def test_slurm_tests_skip_with_a_reason_where_they_cannot_run(monkeypatch):
    import slurm_cluster as sc

    monkeypatch.delenv(sc.REQUIRE_ENV, raising=False)
    monkeypatch.delenv(sc.OPT_IN_ENV, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in sc.why_not_startable()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(sc, "missing_binaries", lambda: ["sbatch"])
    monkeypatch.setattr(sc.shutil, "which", lambda name: None)
    assert "no apt-get" in sc.why_not_startable()
    monkeypatch.setenv(sc.OPT_IN_ENV, "0")
    assert "turned off" in sc.why_not_startable()


def test_slurm_runs_by_default_as_root_and_a_required_one_cannot_be_skipped(monkeypatch):
    import slurm_cluster as sc

    monkeypatch.delenv(sc.OPT_IN_ENV, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(sc, "missing_binaries", lambda: [])
    assert sc.why_not_startable() is None  # root: on by default
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv(sc.REQUIRE_ENV, "1")
    monkeypatch.setattr(sc, "_shared", None)
    monkeypatch.setattr(sc, "_shared_skip", None)
    with pytest.raises(sc.SlurmError, match="CELLMAPSEG_REQUIRE_SLURM=1 but .*needs root"):
        sc.shared_cluster()
