"""Networks: output lists (full resolution first), deep-supervision heads, ROI checks, sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import NUM_CHANNELS, ONTOLOGY
from monai.networks.nets.flexible_unet import SegmentationHead

from cellmapseg.config import ModelConfig, from_dict, load
from cellmapseg.errors import ConfigError
from cellmapseg.models import Net, build_network, check_model, count_parameters, roi_divisor

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
SEGRESNET = {"type": "segresnet", "init_filters": 4, "blocks_down": [1, 1, 1, 1]}
SWIN = {"type": "swinunetr", "feature_size": 12, "depths": [1, 1, 1, 1]}
C = NUM_CHANNELS  # 14 outputs: one per atomic class of the default ontology
FLEX = {"type": "flexunet", "backbone": "resnet10", "decoder_channels": [16, 8, 8, 8, 4]}


def model_cfg(network: dict[str, Any], **fields: Any) -> ModelConfig:
    if network["type"] == "segresnet":
        fields.setdefault("ds_weights", [1.0])  # required for segresnet
    return from_dict({"models": {"m": {"network": network, **fields}}}).models["m"]


def shapes(outs: list[torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(o.shape) for o in outs]


def test_segresnet_returns_one_output_per_ds_level_full_resolution_first():
    net = build_network(model_cfg(SEGRESNET, ds_weights=[1.0, 0.5, 0.25]), 1, C).train()
    outs = net(torch.randn(2, 1, 32, 32, 32))
    assert shapes(outs) == [(2, C, 32, 32, 32), (2, C, 16, 16, 16), (2, C, 8, 8, 8)]
    assert shapes(net.eval()(torch.randn(1, 1, 32, 32, 32))) == [(1, C, 32, 32, 32)]


def test_segresnet_trailing_zero_ds_weights_build_fewer_heads():
    net = build_network(model_cfg(SEGRESNET, ds_weights=[1.0, 0.5, 0.0]), 1, C).train()
    heads = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.out_channels == C]
    assert len(heads) == 2
    assert len(net(torch.randn(2, 1, 32, 32, 32))) == 2


@pytest.mark.parametrize("weights", [[1.0, 0.0, 0.5], [0.0, 1.0], [0.0]])
def test_segresnet_zero_weight_before_a_nonzero_one_or_first_is_config_error(weights):
    with pytest.raises(ConfigError, match=r"models\.m\.ds_weights"):
        build_network(model_cfg(SEGRESNET, ds_weights=weights), 1, C)


def test_segresnet_more_ds_levels_than_decoder_levels_is_config_error():
    with pytest.raises(ConfigError, match=r"models\.m\.ds_weights.*at most 3"):
        build_network(model_cfg(SEGRESNET, ds_weights=[1, 1, 1, 1]), 1, C)


def test_swinunetr_returns_a_single_full_resolution_output():
    net = build_network(model_cfg(SWIN), 1, C).train()
    # one side of 64: the /32 bottleneck needs two voxels for its instance norm
    assert shapes(net(torch.randn(2, 1, 32, 32, 64))) == [(2, C, 32, 32, 64)]


@pytest.mark.parametrize(("weights", "sides"), [
    ([0, 0, 0, 1], [32]),
    ([0, 0.25, 0.5, 1], [32, 16, 8]),
    ([1, 1, 1, 1], [32, 16, 8, 4]),
    ([0.5, 1], [32, 16]),
    (None, [32]),
])
def test_flexunet_builds_one_head_per_nonzero_lvl_weight(weights, sides):
    net = build_network(model_cfg(FLEX, lvl_weights=weights), 1, C).train()
    assert sum(isinstance(m, SegmentationHead) for m in net.modules()) == len(sides)
    outs = net(torch.randn(2, 1, 32, 32, 32))
    assert shapes(outs) == [(2, C, s, s, s) for s in sides]
    assert shapes(net.eval()(torch.randn(2, 1, 32, 32, 32))) == [(2, C, 32, 32, 32)]


def test_flexunet_zero_last_lvl_weight_is_config_error():
    with pytest.raises(ConfigError, match=r"models\.m\.lvl_weights.*last"):
        build_network(model_cfg(FLEX, lvl_weights=[0, 0, 1, 0]), 1, C)


def test_swinunetr_roi_not_divisible_by_32_is_config_error():
    with pytest.raises(ConfigError, match=r"models\.m\.roi_size.*\[48, 48, 48\].*32"):
        check_model(model_cfg(SWIN, roi_size=[48, 48, 48]))


@pytest.mark.parametrize(("network", "divisor"), [(SEGRESNET, 8), (SWIN, 32), (FLEX, 32)])
def test_roi_divisor_follows_the_network_downsampling(network, divisor):
    assert roi_divisor(model_cfg(network)) == divisor
    bad = model_cfg(network, roi_size=[64, 64, 64 + divisor // 2])
    with pytest.raises(ConfigError, match=rf"models\.m\.roi_size.*{divisor}"):
        check_model(bad)


@pytest.mark.parametrize(("network", "roi"), [(SWIN, [32, 32, 32]), (SEGRESNET, [8, 8, 8])])
def test_roi_that_leaves_a_single_bottleneck_voxel_is_config_error(network, roi):
    cfg = model_cfg(network, roi_size=roi)
    with pytest.raises(ConfigError, match=r"models\.m\.roi_size.*single voxel"):
        check_model(cfg)


@pytest.mark.parametrize("name", ["segresnet", "swinunetr", "flexunet_resnet34"])
def test_cpu_config_models_train_forward_at_their_roi(name):
    cfg = load(CONFIG_DIR / "config.yaml").model(name)
    net = Net(cfg, ONTOLOGY).network.train()
    outs = net(torch.randn(2, 1, *cfg.roi_size))
    assert tuple(outs[0].shape) == (2, C, *cfg.roi_size)
    print(f"{name}: {count_parameters(net):,} parameters")


# Measured with MONAI 1.6.1; a 5% band keeps the spec's sizes honest without pinning digits.
CLUSTER_PARAMETERS = {
    "segresnet": 87_170_008, "swinunetr": 72_762_656, "flexunet_resnet34": 70_577_038,
}


@pytest.mark.parametrize("name", sorted(CLUSTER_PARAMETERS))
def test_cluster_config_models_build_with_the_spec_sizes(name):
    cfg = load(CONFIG_DIR / "cluster.yaml").model(name)
    net = Net(cfg, ONTOLOGY).eval()
    n = count_parameters(net)
    print(f"{name}: {n:,} parameters")
    assert n == pytest.approx(CLUSTER_PARAMETERS[name], rel=0.05)
    side = roi_divisor(cfg)  # the smallest patch that runs: one side doubled
    with torch.no_grad():
        logits = net.predict(torch.randn(1, 1, side, side, 2 * side))
    assert tuple(logits.shape) == (1, C, side, side, 2 * side)
