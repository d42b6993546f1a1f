"""Determinism: two CPU runs with the same seed give bitwise-identical losses, step by step.

Both runs go through the package's training entry point (cellmapseg.train.rank.main under
torchrun, 2 gloo ranks with one loader worker each, strategy B, Mixup on); a thin wrapper
records every micro-batch loss of every rank by wrapping the DDP module. The two runs are
started at the same time, so they also see different scheduling and worker timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_model, tiny_two_rank_job

STEPS = 20
MODEL = tiny_model(batch_size=1, train_sub_epochs=14, mixup_p=0.5)

# One rank: the package's entry point, with the DDP module wrapped to record each loss.
RANK = '''
import json, os, sys
from pathlib import Path
from torch.nn.parallel import DistributedDataParallel
import cellmapseg.train.loop as loop
from cellmapseg.train import rank

losses = []

class Recording(DistributedDataParallel):
    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        losses.append(out["loss"].item())
        return out

loop.DDP = Recording
rank.main(sys.argv[1:])
out = Path(sys.argv[sys.argv.index("--out") + 1])
(out / f"losses_rank{os.environ['RANK']}.json").write_text(json.dumps(losses))
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tiny_two_rank_job(tmp_path_factory.mktemp("determinism"), MODEL, data_seed=4, seed=7)
    (root / "rank.py").write_text(RANK)
    return root


def start(root: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", str(root / "rank.py"), "--model", "tiny", "--config",
           str(root / "config.yaml"), "--inventory", str(root / "inventory.csv"), "--caching",
           str(root / "caching.json"), "--out", str(out)]
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_runs_with_the_same_seed_have_identical_losses(setup, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [start(setup, out) for out in runs]
    for proc in procs:
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, log[-3000:]
    for rank in (0, 1):
        a, b = (json.loads((out / f"losses_rank{rank}.json").read_text()) for out in runs)
        assert len(a) >= STEPS and len(b) >= STEPS
        assert a[:STEPS] == b[:STEPS], f"rank {rank}: {a[:STEPS]} != {b[:STEPS]}"
        # crops without annotations give a loss of 0; most steps must carry a real loss
        assert sum(x != 0 for x in a[:STEPS]) >= STEPS // 2 and len(set(a[:STEPS])) > 2
    summaries = [json.loads((out / "summary.json").read_text()) for out in runs]
    assert summaries[0]["steps"] == summaries[1]["steps"] >= STEPS
    assert summaries[0]["best_val_dice"] == summaries[1]["best_val_dice"]
