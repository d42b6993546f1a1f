"""MONAI FlexibleUNet with a ResNet encoder and segmentation heads at the decoder scales that
lvl_weights gives a non-zero weight."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE, FlexibleUNet, SegmentationHead
from torch import nn

from cellmapseg.config import ModelConfig
from cellmapseg.errors import ConfigError
from cellmapseg.models.network_type import NetworkType


class FlexUNetLevels(nn.Module):
    """MONAI FlexibleUNet with segmentation heads at several decoder stages.

    FlexibleUNet's decoder returns only its last block's output, so this runs MONAI's encoder
    and decoder blocks itself (UNetDecoder.forward's loop) to keep each block's output.
    `stages` are decoder block indices, full resolution (the last block) first; the last block
    uses FlexibleUNet's own head so the weights of a single-head model load into a plain
    FlexibleUNet.
    """

    def __init__(
        self, unet: FlexibleUNet, stages: Sequence[int], decoder_channels: Sequence[int],
        out_channels: int,
    ) -> None:
        super().__init__()
        n_blocks = len(unet.decoder.blocks)
        if not stages or stages[0] != n_blocks - 1:
            raise ValueError(f"the first stage must be the last decoder block ({n_blocks - 1})")
        self.unet = unet
        self.stages = list(stages)
        self.heads = nn.ModuleDict({
            str(s): SegmentationHead(spatial_dims=3, in_channels=decoder_channels[s],
                                     out_channels=out_channels, kernel_size=3, act=None)
            for s in self.stages[1:]
        })

    def head(self, stage: int) -> nn.Module:
        return self.unet.segmentation_head if stage == self.stages[0] else self.heads[str(stage)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.unet.encoder(x)
        skips = features[:-1][::-1]
        h = features[-1]
        decoded: list[torch.Tensor] = []
        for i, block in enumerate(self.unet.decoder.blocks):
            h = block(h, skips[i] if i < self.unet.skip_connect else None)
            decoded.append(h)
        stages = self.stages if self.training else self.stages[:1]
        return [self.head(s)(decoded[s]) for s in stages]



def _feature_number(m: ModelConfig) -> int:
    return FLEXUNET_BACKBONE.register_dict[m.network.args["backbone"]]["feature_number"]


class FlexUNet(NetworkType):
    name = "flexunet"

    def levels(self, m: ModelConfig) -> list[tuple[int, float]]:
        """(decoder block, weight) of each head, full resolution first, zero weights dropped.

        lvl_weights lists the last len(lvl_weights) decoder blocks, coarsest first."""
        key = m.key("lvl_weights")
        weights = list(m.lvl_weights) if m.lvl_weights is not None else [1.0]
        n_blocks = _feature_number(m)
        if len(weights) > n_blocks - 1:
            raise ConfigError(f"config: key '{key}' = {weights}: at most {n_blocks - 1} decoder "
                              "scales carry heads")
        if weights[-1] <= 0:
            raise ConfigError(f"config: key '{key}' = {weights}: the last (full-resolution) "
                              "weight must be > 0")
        first = n_blocks - len(weights)
        levels = [(first + i, float(w)) for i, w in enumerate(weights) if w > 0]
        return levels[::-1]

    def level_weights(self, m: ModelConfig) -> list[float]:
        return [w for _, w in self.levels(m)]

    def roi_divisor(self, m: ModelConfig) -> int:
        # each encoder output halves the previous one (FlexUNetEncoderRegister's contract)
        return 2 ** _feature_number(m)

    def check(self, m: ModelConfig) -> None:
        if m.network.args.get("pretrained", False):
            raise ConfigError(f"config: key '{m.key('network.pretrained')}' must be false")
        super().check(m)

    def build(self, m: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
        args = m.network.args
        decoder_channels = tuple(args["decoder_channels"])
        unet = FlexibleUNet(
            in_channels=in_channels, out_channels=out_channels, backbone=args["backbone"],
            pretrained=False, decoder_channels=decoder_channels, spatial_dims=3,
        )
        stages = [s for s, _ in self.levels(m)]
        return FlexUNetLevels(unet, stages, decoder_channels, out_channels)
