"""Process-group setup for ranks started by torchrun: NCCL on GPUs, gloo on CPU."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cellmapseg.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(gpus: int, timeout_s: float = 1800.0) -> Dist:
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if gpus > 0:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible < int(os.environ.get("LOCAL_WORLD_SIZE", world)):
            raise InputError(f"config: {gpus} GPU ranks (train.gpus, or the job's resources.gpu "
                             f"under Slurm) but this node shows {visible} CUDA device(s) to torch")
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Dist(rank=rank, world=world, local_rank=local, device=device)


def deterministic(d: Dist, on_gpu: bool) -> None:
    """Deterministic kernels: always on CPU (they cost little there), on GPUs when asked
    (train.deterministic), where an op without a deterministic CUDA kernel warns instead of
    failing."""
    if d.device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    elif on_gpu:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def all_gather(obj: Any) -> list[Any]:  # any picklable value
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean(value: torch.Tensor) -> float:
    """Mean of a device scalar over ranks (one host sync, at epoch end)."""
    total = value.detach().clone().float()
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sync_batchnorm(net: nn.Module, wanted: bool, d: Dist) -> nn.Module:
    """`net` with its batch norms synchronised across ranks (`syncbn`) when that can run: with
    more than one rank, on GPUs (torch's SyncBatchNorm has no CPU kernel; CPU ranks keep their
    own statistics, with a warning). The state dict keys do not change, so the checkpoint loads
    into a plain network for prediction."""
    if not wanted or d.world == 1:
        return net
    if d.device.type == "cpu":
        if d.is_main and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                             for m in net.modules()):
            log.warning("syncbn: SyncBatchNorm runs on GPUs only; the %d CPU ranks keep their "
                        "own batch-norm statistics", d.world)
        return net
    return nn.SyncBatchNorm.convert_sync_batchnorm(net)
