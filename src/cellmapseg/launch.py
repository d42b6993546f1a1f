"""How ranks are started: torchrun on one node, the same for the memory probe and training."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def torchrun_command(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    """argv (never a shell string) for `torchrun --standalone --nnodes=1 --nproc_per_node=N -m`.

    --standalone picks a free local rendezvous port, so concurrent jobs on a node do not clash.
    """
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        f"--nproc_per_node={nproc}", "-m", module, *map(str, args),
    ]
