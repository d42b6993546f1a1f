"""MONAI SegResNetDS with deep supervision: one output per level of ds_weights."""

from __future__ import annotations

import math

from monai.networks.nets import SegResNetDS
from torch import nn

from cellmapseg.config import ModelConfig
from cellmapseg.errors import ConfigError
from cellmapseg.models.network_type import ListOutput, NetworkType


class SegResNet(NetworkType):
    name = "segresnet"

    def level_weights(self, m: ModelConfig) -> list[float]:
        """Level weights, full resolution first, trailing zeros trimmed."""
        key = m.key("ds_weights")
        weights = list(m.ds_weights or [])
        while weights and weights[-1] == 0:
            weights.pop()
        if not weights or weights[0] <= 0:
            raise ConfigError(f"config: key '{key}' = {list(m.ds_weights or [])}: the first "
                              "(full-resolution) weight must be > 0")
        if 0 in weights:
            raise ConfigError(f"config: key '{key}' = {list(m.ds_weights)}: a zero weight before "
                              "a non-zero one would build a head that never reaches the loss")
        blocks_down = m.network.args["blocks_down"]
        max_levels = max(len(blocks_down) - 1, 1)
        if len(weights) > max_levels:
            raise ConfigError(f"config: key '{key}' = {list(m.ds_weights)}: blocks_down "
                              f"{blocks_down} gives at most {max_levels} levels")
        return weights

    def roi_divisor(self, m: ModelConfig) -> int:
        return 2 ** (len(m.network.args["blocks_down"]) - 1)

    def instance_norm_bottleneck(self, m: ModelConfig) -> bool:
        return m.network.args["norm"] == "INSTANCE"

    def build(self, m: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
        args = m.network.args
        norm: str | tuple = args["norm"]
        if norm == "GROUP":  # GroupNorm needs a group count that divides every level's width
            norm = ("GROUP", {"num_groups": math.gcd(8, args["init_filters"])})
        net = SegResNetDS(
            spatial_dims=3, init_filters=args["init_filters"], in_channels=in_channels,
            out_channels=out_channels, norm=norm, blocks_down=tuple(args["blocks_down"]),
            dsdepth=len(self.level_weights(m)),
        )
        # SegResNetDS already lists its deep-supervision outputs full resolution first
        return ListOutput(net)
