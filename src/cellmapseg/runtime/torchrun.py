"""How ranks are started: torchrun on one node, the same for the memory probe and training."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cellmapseg.errors import InputError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def torchrun_command(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    """argv (never a shell string) for `torchrun --standalone --nnodes=1 --nproc_per_node=N -m`.

    --standalone picks a free local rendezvous port, so concurrent jobs on a node do not clash.
    """
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        f"--nproc_per_node={nproc}", "-m", module, *map(str, args),
    ]


def die_with_parent() -> None:
    """Have the kernel SIGKILL this rank when torchrun (the process that started it) dies.

    torchrun starts every rank in a session of its own, so a `kill -9` of the job's process
    group (Snakemake, the stage, torchrun) never reaches the ranks: they would train on as
    orphans and write checkpoints and outputs underneath the rerun. Call it first thing in a
    rank's entry point. Acts only in a process torchrun started (TORCHELASTIC_RUN_ID is set) and
    only on Linux (prctl PR_SET_PDEATHSIG); a no-op elsewhere.
    """
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if _orphaned():  # torchrun died before the request was made
        os.kill(os.getpid(), signal.SIGKILL)


def _orphaned() -> bool:
    """Re-parented to init, unless init is torchrun itself (torchrun as a container's PID 1)."""
    if os.getppid() != 1:
        return False
    try:
        init = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return False
    return b"torch.distributed.run" not in init and b"torchrun" not in init


def usable_cpus(threads: int | None = None) -> int:
    """The job's threads, but never more than the CPUs this process may run on (a scheduler
    can grant more threads than the machine has, and Slurm confines a job to its CPUs)."""
    usable = len(os.sched_getaffinity(0))
    return max(1, min(threads or usable, usable))


def threads_per_rank(threads: int | None, world: int) -> int:
    """CPU threads for each rank (oversubscribed OpenMP threads slow training several times)."""
    return max(1, usable_cpus(threads) // world)


def run_logged(cmd: Sequence[str], env: Mapping[str, str], log_file: Path, what: str) -> None:
    """Run `cmd` (a torchrun command) with its output appended to `log_file`. A failure whose
    ranks printed `error: ...` lines (bad input) raises them as one InputError; any other
    failure raises RuntimeError naming the log."""
    with open(log_file, "a") as fh:  # appended: a resumed run continues the same log
        proc = subprocess.run(list(cmd), env=dict(env), stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode == 0:
        return
    text = log_file.read_text(errors="replace").splitlines()
    errors = list(dict.fromkeys(ln[len("error: "):] for ln in text if ln.startswith("error: ")))
    if errors:
        raise InputError("\n".join(errors))
    raise RuntimeError(f"{what} failed (torchrun exit {proc.returncode}); see {log_file}")
