"""What every network type provides: how it is built from its config, which patch sides it
accepts, the loss weight of each output and the checks of its config that the schema cannot
express. One subclass per type (models/segresnet.py, ...), listed in models/registry.py.

Every network's forward returns a list of logits, full resolution first, then the coarser
deep-supervision levels that carry a non-zero weight (in eval: possibly only the first). Every
head that is built reaches the loss: training runs DDP with find_unused_parameters=False, where
a parameter without a gradient stalls the gradient reduction.
"""

from __future__ import annotations

import torch
from torch import nn

from cellmapseg.config import ModelConfig
from cellmapseg.errors import ConfigError


class ListOutput(nn.Module):
    """Wrap a network that returns a tensor or a list (SegResNetDS: a list in training only)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.net(x)
        return list(out) if isinstance(out, (list, tuple)) else [out]


class NetworkType:
    """Base of the network types; `name` is the config's network.type."""

    name: str = ""

    def build(self, m: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
        raise NotImplementedError

    def roi_divisor(self, m: ModelConfig) -> int:
        """Every side of an input patch must be a multiple of this."""
        raise NotImplementedError

    def level_weights(self, m: ModelConfig) -> list[float]:
        """Loss weight of each output of `build(m)`, in the same order (ConfigError if the
        configured weights cannot be built)."""
        return [1.0]

    def instance_norm_bottleneck(self, m: ModelConfig) -> bool:
        """Whether instance norm runs at the coarsest level (it needs more than one voxel)."""
        return False

    def check(self, m: ModelConfig) -> None:
        """Every config check that needs the network: ROI sides, then the level weights."""
        self.check_roi(m)
        self.level_weights(m)

    def check_roi(self, m: ModelConfig) -> None:
        divisor = self.roi_divisor(m)
        roi = list(m.roi_size)
        key = m.key("roi_size")
        if any(side % divisor for side in roi):
            raise ConfigError(f"config: key '{key}' = {roi}: every side must be divisible by "
                              f"{divisor} for {self.name}")
        if self.instance_norm_bottleneck(m) and all(side == divisor for side in roi):
            raise ConfigError(
                f"config: key '{key}' = {roi}: {self.name} reduces it by {divisor} to a single "
                f"voxel, where instance norm fails; make at least one side {2 * divisor} or more"
            )
