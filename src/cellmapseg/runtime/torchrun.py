"""How ranks are started: torchrun on one node, the same for the memory probe and training;
on more than one node, one torchrun agent per node (srun) meeting at a c10d rendezvous."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
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


def free_port() -> int:
    """A TCP port free on this host now (the rendezvous store binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def multinode_command(nnodes: int, nproc: int, module: str, args: Sequence[str],
                      endpoint: str, run_id: str) -> list[str]:
    """argv of ONE node's torchrun agent of an `nnodes`-node job: every agent gets the same
    command; they meet at the c10d rendezvous `endpoint` (host:port, served by the agent on
    that host) and agree on node ranks there, so no agent needs to know its own."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
        f"--nproc_per_node={nproc}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={run_id}", "-m", module, *map(str, args),
    ]


# What a nested srun must not inherit from the step it runs in (they would size the new step
# like the old one: one task, one node); the allocation's identity is kept.
_SLURM_KEEP = ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CLUSTER_NAME", "SLURM_SUBMIT_DIR",
               "SLURM_SUBMIT_HOST", "SLURM_CONF")


def srun_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if not k.startswith(("SLURM_", "SRUN_", "SBATCH_")) or k in _SLURM_KEEP}


def srun_command(nnodes: int, cpus: int | None, agent: Sequence[str]) -> list[str]:
    """srun starting `agent` once on each of the job's `nnodes` nodes. --overlap: the step
    this stage runs in (the jobstep plugin's `srun -n1`) keeps its share of the first node, and
    the new step shares it; every step gets all of the job's GPUs on its nodes by default."""
    return ["srun", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1",
            "--overlap", "--kill-on-bad-exit=1", *([f"--cpus-per-task={cpus}"] if cpus else []),
            *agent]


def slurm_job_nodes(env: Mapping[str, str]) -> str | None:
    """Nodes of the Slurm job this process runs in: SLURM_JOB_NUM_NODES, or (inside a step
    that the snakemake jobstep plugin started with only the job's id in its environment)
    what squeue says of the job; None outside Slurm."""
    if "SLURM_JOB_NUM_NODES" in env:
        return env["SLURM_JOB_NUM_NODES"]
    job = env.get("SLURM_JOB_ID")
    if job is None:
        return None
    proc = subprocess.run(["squeue", "-h", "-j", job, "-o", "%D"], env=dict(env),
                          capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"squeue -j {job} failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc.stdout.split()[0]


def require_nodes(nnodes: int, env: Mapping[str, str] | None = None) -> None:
    """One line (InputError) unless this process runs in a Slurm job of `nnodes` nodes (or
    `nnodes` is 1): checked before any work, so a misplaced job writes nothing."""
    if nnodes == 1:
        return
    env = os.environ if env is None else env
    job_nodes = slurm_job_nodes(env)
    if job_nodes is None or int(job_nodes) != nnodes:
        raise InputError(f"config: {nnodes} nodes (allocation.nodes) need a Slurm job of "
                         f"{nnodes} nodes; this job has {job_nodes or 'no Slurm allocation'} "
                         "(run through profiles/slurm, or set nodes to 1)")


def launch(nnodes: int, nproc: int, module: str, args: Sequence[str],
           cpus: int | None = None, env: Mapping[str, str] | None = None
           ) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that start `nproc` ranks on each of `nnodes` nodes: torchrun
    --standalone on one node, else srun with one agent per node inside the Slurm job this
    process runs in (it hosts the rendezvous: Slurm runs the job's steps on its first node)."""
    env = dict(os.environ if env is None else env)
    if nnodes == 1:
        return torchrun_command(nproc, module, args), env
    require_nodes(nnodes, env)
    run_id = env.get("SLURM_JOB_ID", str(os.getpid()))
    agent = multinode_command(nnodes, nproc, module, args,
                              f"{socket.gethostname()}:{free_port()}", run_id)
    return srun_command(nnodes, cpus, agent), srun_env(env)


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
