"""Facts about the node a stage runs on: RAM (and the job's cgroup limit), /dev/shm, CPUs,
GPUs and the Slurm allocation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

SLURM_VARS = (
    "SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_NTASKS",
    "SLURM_CPUS_PER_TASK", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_MEM_PER_NODE",
)


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    return out


def cgroup_memory() -> dict[str, int | None]:
    """The memory limit and usage of this process's cgroup (Slurm enforces --mem there).

    Handles cgroup v2 (memory.max) and v1 (memory.limit_in_bytes); inside a container the
    cgroup path may not be visible, in which case the mount's root files are read."""
    limit = usage = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hier, controllers, path = line.split(":", 2)
        v2 = hier == "0" and controllers == ""
        if not v2 and "memory" not in controllers.split(","):
            continue
        base = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/memory")
        names = ("memory.max", "memory.current") if v2 else (
            "memory.limit_in_bytes", "memory.usage_in_bytes")
        for folder in (base / path.lstrip("/"), base):
            if (folder / names[0]).is_file():
                raw = (folder / names[0]).read_text().strip()
                limit = None if raw == "max" or int(raw) >= 2**60 else int(raw)
                usage = int((folder / names[1]).read_text().strip())
                break
        if limit is not None:
            break
    return {"limit_bytes": limit, "usage_bytes": usage}


def available_bytes() -> int:
    """RAM this job can still use: MemAvailable, capped by the cgroup's remaining headroom."""
    avail = meminfo().get("MemAvailable", 0)
    cg = cgroup_memory()
    if cg["limit_bytes"] is not None and cg["usage_bytes"] is not None:
        avail = min(avail, max(cg["limit_bytes"] - cg["usage_bytes"], 0))
    return avail


def disk(path: str | Path) -> dict[str, Any]:
    """Capacity of the file system holding `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    usage = shutil.disk_usage(p)
    return {"path": str(path), "total_bytes": usage.total, "free_bytes": usage.free,
            "tmpfs": _is_tmpfs(p)}


def _is_tmpfs(path: Path) -> bool:
    """Whether `path` lives on tmpfs (its pages are RAM, charged to the writer's cgroup)."""
    best, fstype = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, kind, *_ = line.split()
        if str(path).startswith(mount) and len(mount) > len(best):
            best, fstype = mount, kind
    return fstype == "tmpfs"


def gpus() -> dict[str, Any]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "torch_cuda_available": torch.cuda.is_available(),
        "torch_device_count": count,
        "names": [torch.cuda.get_device_name(i) for i in range(count)],
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def facts(store_dir: str, disk_dir: str) -> dict[str, Any]:
    info = meminfo()
    return {
        "hostname": os.uname().nodename,
        "ram_total_bytes": info.get("MemTotal", 0),
        "ram_available_bytes": info.get("MemAvailable", 0),
        "cgroup": cgroup_memory(),
        "job_available_bytes": available_bytes(),
        "store_dir": disk(store_dir),
        "disk_dir": disk(disk_dir),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "gpus": gpus(),
        "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ},
    }
