"""The network types by config name (network.type). A new network: a NetworkType subclass in
a module of its own, one entry here, and its arguments under $defs in config_schema.yaml."""

from __future__ import annotations

from torch import nn

from cellmapseg.config import ModelConfig
from cellmapseg.errors import ConfigError
from cellmapseg.models.flexunet import FlexUNet
from cellmapseg.models.network_type import NetworkType
from cellmapseg.models.segresnet import SegResNet
from cellmapseg.models.swinunetr import SwinUNETRType

NETWORKS: dict[str, NetworkType] = {t.name: t for t in (SegResNet(), SwinUNETRType(), FlexUNet())}


def network_type(m: ModelConfig) -> NetworkType:
    kind = m.network.type
    if kind not in NETWORKS:
        raise ConfigError(f"config: key '{m.key('network.type')}' = {kind!r} is not supported")
    return NETWORKS[kind]


def build_network(m: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """Network whose forward returns [full-res logits, coarser logits...] (eval: may be just
    [full-res])."""
    return network_type(m).build(m, in_channels, out_channels)


def roi_divisor(m: ModelConfig) -> int:
    return network_type(m).roi_divisor(m)


def level_weights(m: ModelConfig) -> list[float]:
    return network_type(m).level_weights(m)


def check_model(m: ModelConfig) -> None:
    """Every check of a model's config that needs its network type (before any GPU work)."""
    network_type(m).check(m)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
