"""The three MONAI backbones behind one interface: `forward(x)` returns a list of logits,
full resolution first, then the coarser deep-supervision levels that carry a non-zero weight.

Every head that is built reaches the loss: training runs DDP with find_unused_parameters=False,
where a parameter without a gradient stalls the gradient reduction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import SegResNetDS, SwinUNETR
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE, FlexibleUNet, SegmentationHead
from torch import nn

from cellmapseg.classes import NUM_CLASSES
from cellmapseg.config import ModelConfig
from cellmapseg.errors import ConfigError

SWIN_PATCH_SIZE = 2  # SwinUNETR's default; its five stages need sides divisible by 2**5


class ListOutput(nn.Module):
    """Wrap a network that returns a tensor or a list (SegResNetDS: a list in training only)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.net(x)
        return list(out) if isinstance(out, (list, tuple)) else [out]


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


def _ds_weights(name: str, cfg: ModelConfig) -> list[float]:
    """SegResNetDS level weights, full resolution first, trailing zeros trimmed."""
    key = f"models.{name}.ds_weights"
    weights = list(cfg.ds_weights or [])
    while weights and weights[-1] == 0:
        weights.pop()
    if not weights or weights[0] <= 0:
        raise ConfigError(f"config: key '{key}' = {list(cfg.ds_weights or [])}: the first "
                          "(full-resolution) weight must be > 0")
    if 0 in weights:
        raise ConfigError(f"config: key '{key}' = {list(cfg.ds_weights)}: a zero weight before a "
                          "non-zero one would build a head that never reaches the loss")
    max_levels = max(len(cfg.network.args["blocks_down"]) - 1, 1)
    if len(weights) > max_levels:
        raise ConfigError(f"config: key '{key}' = {list(cfg.ds_weights)}: blocks_down "
                          f"{cfg.network.args['blocks_down']} gives at most {max_levels} levels")
    return weights


def _flex_levels(name: str, cfg: ModelConfig) -> list[tuple[int, float]]:
    """(decoder block, weight) of each head, full resolution first, zero weights dropped.

    lvl_weights lists the last len(lvl_weights) decoder blocks, coarsest first."""
    key = f"models.{name}.lvl_weights"
    weights = list(cfg.lvl_weights) if cfg.lvl_weights is not None else [1.0]
    n_blocks = FLEXUNET_BACKBONE.register_dict[cfg.network.args["backbone"]]["feature_number"]
    if len(weights) > n_blocks - 1:
        raise ConfigError(f"config: key '{key}' = {weights}: at most {n_blocks - 1} decoder "
                          "scales carry heads")
    if weights[-1] <= 0:
        raise ConfigError(f"config: key '{key}' = {weights}: the last (full-resolution) weight "
                          "must be > 0")
    first = n_blocks - len(weights)
    levels = [(first + i, float(w)) for i, w in enumerate(weights) if w > 0]
    return levels[::-1]


def level_weights(name: str, cfg: ModelConfig) -> list[float]:
    """Loss weight of each output of `build_network(cfg)`, in the same order."""
    kind = cfg.network.type
    if kind == "segresnet":
        return _ds_weights(name, cfg)
    if kind == "flexunet":
        return [w for _, w in _flex_levels(name, cfg)]
    if kind == "swinunetr":
        return [1.0]
    raise ConfigError(f"config: key 'models.{name}.network.type' = {kind!r} is not supported")


def _segresnet(name: str, cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    args = cfg.network.args
    norm: str | tuple = args["norm"]
    if norm == "GROUP":  # GroupNorm needs a group count that divides every level's width
        norm = ("GROUP", {"num_groups": math.gcd(8, args["init_filters"])})
    net = SegResNetDS(
        spatial_dims=3, init_filters=args["init_filters"], in_channels=in_channels,
        out_channels=out_channels, norm=norm, blocks_down=tuple(args["blocks_down"]),
        dsdepth=len(_ds_weights(name, cfg)),
    )
    # SegResNetDS already lists its deep-supervision outputs full resolution first
    return ListOutput(net)


def _swinunetr(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    args = cfg.network.args
    net = SwinUNETR(
        in_channels=in_channels, out_channels=out_channels, patch_size=SWIN_PATCH_SIZE,
        feature_size=args["feature_size"], depths=tuple(args["depths"]),
        num_heads=tuple(args["num_heads"]), drop_rate=args["drop_rate"],
        attn_drop_rate=args["attn_drop_rate"], dropout_path_rate=args["dropout_path_rate"],
        use_v2=args["use_v2"], use_checkpoint=args["use_checkpoint"], spatial_dims=3,
    )
    return ListOutput(net)


def _flexunet(name: str, cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    args = cfg.network.args
    if args.get("pretrained", False):
        raise ConfigError(f"config: key 'models.{name}.network.pretrained' must be false")
    decoder_channels = tuple(args["decoder_channels"])
    unet = FlexibleUNet(
        in_channels=in_channels, out_channels=out_channels, backbone=args["backbone"],
        pretrained=False, decoder_channels=decoder_channels, spatial_dims=3,
    )
    stages = [s for s, _ in _flex_levels(name, cfg)]
    return FlexUNetLevels(unet, stages, decoder_channels, out_channels)


def build_network(
    cfg: ModelConfig, in_channels: int = 1, out_channels: int = NUM_CLASSES, *,
    name: str = "<model>",
) -> nn.Module:
    """Network whose forward returns [full-res logits, coarser logits...] (eval: may be just
    [full-res]). `name` is the model key, used in error messages."""
    kind = cfg.network.type
    if kind == "segresnet":
        return _segresnet(name, cfg, in_channels, out_channels)
    if kind == "swinunetr":
        return _swinunetr(cfg, in_channels, out_channels)
    if kind == "flexunet":
        return _flexunet(name, cfg, in_channels, out_channels)
    raise ConfigError(f"config: key 'models.{name}.network.type' = {kind!r} is not supported")


def roi_divisor(cfg: ModelConfig) -> int:
    """Every side of an input patch must be a multiple of this."""
    kind = cfg.network.type
    if kind == "swinunetr":
        return SWIN_PATCH_SIZE**5
    if kind == "segresnet":
        return 2 ** (len(cfg.network.args["blocks_down"]) - 1)
    if kind == "flexunet":
        # each encoder output halves the previous one (FlexUNetEncoderRegister's contract)
        return 2 ** FLEXUNET_BACKBONE.register_dict[cfg.network.args["backbone"]]["feature_number"]
    raise ConfigError(f"config: network type {kind!r} is not supported")


def _instance_norm_bottleneck(cfg: ModelConfig) -> bool:
    """Instance norm at the coarsest level needs more than one voxel (in eval too)."""
    kind = cfg.network.type
    return kind == "swinunetr" or (kind == "segresnet" and cfg.network.args["norm"] == "INSTANCE")


def check_roi(name: str, cfg: ModelConfig) -> None:
    divisor = roi_divisor(cfg)
    roi = list(cfg.roi_size)
    key = f"models.{name}.roi_size"
    if any(side % divisor for side in roi):
        raise ConfigError(
            f"config: key '{key}' = {roi}: every side must be divisible by {divisor} for "
            f"{cfg.network.type}"
        )
    if _instance_norm_bottleneck(cfg) and all(side == divisor for side in roi):
        raise ConfigError(
            f"config: key '{key}' = {roi}: {cfg.network.type} reduces it by {divisor} to a single "
            f"voxel, where instance norm fails; make at least one side {2 * divisor} or more"
        )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
