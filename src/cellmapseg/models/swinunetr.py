"""MONAI SwinUNETR (v2): one full-resolution output."""

from __future__ import annotations

from monai.networks.nets import SwinUNETR
from torch import nn

from cellmapseg.config import ModelConfig
from cellmapseg.models.network_type import ListOutput, NetworkType

SWIN_PATCH_SIZE = 2  # SwinUNETR's default; its five stages need sides divisible by 2**5


class SwinUNETRType(NetworkType):
    name = "swinunetr"

    def roi_divisor(self, m: ModelConfig) -> int:
        return SWIN_PATCH_SIZE**5

    def instance_norm_bottleneck(self, m: ModelConfig) -> bool:
        return True

    def build(self, m: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
        args = m.network.args
        net = SwinUNETR(
            in_channels=in_channels, out_channels=out_channels, patch_size=SWIN_PATCH_SIZE,
            feature_size=args["feature_size"], depths=tuple(args["depths"]),
            num_heads=tuple(args["num_heads"]), drop_rate=args["drop_rate"],
            attn_drop_rate=args["attn_drop_rate"], dropout_path_rate=args["dropout_path_rate"],
            use_v2=args["use_v2"], use_checkpoint=args["use_checkpoint"], spatial_dims=3,
        )
        return ListOutput(net)
