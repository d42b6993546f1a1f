"""A dying rank ends the whole 2-rank gloo job, fast and with the rank's error in the log.

Rank 1 is made to fail after optimizer step 3 through the fault-injection hook
(CELLMAPSEG_FAULT, read by cellmapseg.train.loop): it raises, or SIGKILLs itself. The job is
started the way the workflow starts it (`cellmapseg train` -> torchrun -> 2 ranks, 1 loader
worker each, strategy B), and must exit non-zero within 60 s of the fault instead of leaving
rank 0 waiting in a collective. The two jobs run side by side to save time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime

import pytest
from conftest import tiny_model, tiny_two_rank_job

from cellmapseg.train.loop import fault_from_env

LIMIT_S = 60.0
KINDS = ("raise", "kill")
MODEL = tiny_model(ds_weights=[1.0], batch_size=1, train_sub_epochs=4, epochs=2, eval_epochs=2,
                   mixup_p=0.5)
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ERROR .*injected fault", re.M)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return tiny_two_rank_job(tmp_path_factory.mktemp("rankfail"), MODEL, data_seed=2)


@pytest.fixture(scope="module")
def failed(job):
    """Both failing jobs, run at the same time: kind -> (exit status, seconds from the
    injected fault to the launcher's exit, train.log, the launcher's stderr)."""
    procs = {}
    for kind in KINDS:
        cmd = [sys.executable, "-m", "cellmapseg", "-c", str(job / "config.yaml"), "train",
               "--model", "tiny", "--inventory", str(job / "inventory.csv"), "--caching",
               str(job / "caching.json"), "--out", str(job / kind), "--threads", "1"]
        env = {**os.environ, "CELLMAPSEG_FAULT": f"rank=1,step=3,kind={kind}"}
        with open(job / f"{kind}.err", "w") as err:
            procs[kind] = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    ended: dict[str, float] = {}
    deadline = time.time() + 240  # only keeps a hang from stalling the suite
    while len(ended) < len(procs) and time.time() < deadline:
        for kind, proc in procs.items():
            if kind not in ended and proc.poll() is not None:
                ended[kind] = time.time()
        time.sleep(0.05)
    out = {}
    for kind, proc in procs.items():
        if kind not in ended:
            proc.kill()
            proc.wait()
            ended[kind] = time.time()
        log = (job / kind / "train.log").read_text()
        found = STAMP.search(log)
        assert found, f"{kind}: the fault was never injected:\n{log[-3000:]}"
        injected = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out[kind] = (proc.returncode, ended[kind] - injected, log,
                     (job / f"{kind}.err").read_text())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_rank_ends_the_job_with_its_error(failed, job, kind):
    returncode, seconds, log, stderr = failed[kind]
    assert returncode != 0, log[-3000:]
    assert seconds < LIMIT_S, f"exit {seconds:.1f} s after rank 1 died"
    if kind == "raise":  # rank 1's own traceback
        assert "RuntimeError: injected fault: rank 1 raised after step 3" in log
    else:  # torchrun names the killed rank and the signal
        assert "Signal 9 (SIGKILL) received by PID" in log
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)", log), log[-3000:]
    assert "training tiny failed (torchrun exit 1)" in stderr
    assert not (job / kind / "summary.json").exists()
    print(f"{kind}: exit {seconds:.2f} s after the fault")


def test_fault_hook_is_off_unless_set_and_refuses_a_bad_spec(monkeypatch):
    monkeypatch.delenv("CELLMAPSEG_FAULT", raising=False)
    assert fault_from_env() is None
    monkeypatch.setenv("CELLMAPSEG_FAULT", "rank=1,step=3,kind=kill")
    assert fault_from_env() == (1, 3, "kill")
    for bad in ("rank=1", "rank=x,step=3", "rank=1,step=3,kind=hang"):
        monkeypatch.setenv("CELLMAPSEG_FAULT", bad)
        with pytest.raises(ValueError, match="CELLMAPSEG_FAULT"):
            fault_from_env()
