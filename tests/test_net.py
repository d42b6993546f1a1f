"""Mixup with partial annotations, Net's training/eval outputs, and 2-rank DDP for every network."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import NUM_CHANNELS, ONTOLOGY
from torch.nn.parallel import DistributedDataParallel

from cellmapseg.config import ModelConfig, from_dict
from cellmapseg.models import Net, mixup
from cellmapseg.models.mixup import sample_beta
from cellmapseg.models.net import resize_nearest

C = NUM_CHANNELS  # 14
SEGRESNET = {"network": {"type": "segresnet", "init_filters": 4, "blocks_down": [1, 1, 1, 1]},
             "ds_weights": [1.0, 0.5, 0.25], "roi_size": [32, 32, 32]}
SWIN = {"network": {"type": "swinunetr", "feature_size": 12, "depths": [1, 1, 1, 1]},
        "roi_size": [32, 32, 64]}


def flex(lvl_weights: list[float]) -> dict[str, Any]:
    return {"network": {"type": "flexunet", "backbone": "resnet10",
                        "decoder_channels": [16, 8, 8, 8, 4]},
            "lvl_weights": lvl_weights, "roi_size": [32, 32, 32]}


def model_cfg(fields: dict[str, Any], **over: Any) -> ModelConfig:
    return from_dict({"models": {"m": {**fields, **over}}}).models["m"]


def random_batch(roi: list[int], n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Channel c labels the voxels brighter than a threshold of its own (learnable from x);
    random partial masks; the first quarter of sample 0 is padding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, *roi, generator=g)
    thresholds = torch.linspace(-1.5, 1.5, C).view(1, C, 1, 1, 1)
    target = (x > thresholds).float()
    mask = (torch.rand(n, C, generator=g) > 0.5).float()
    mask[:, 0] = 1
    valid = torch.ones(n, 1, *roi)
    valid[0, :, : roi[0] // 4] = 0
    return {"input": x, "target": target, "annotation_mask": mask, "valid": valid}


# --- Mixup -----------------------------------------------------------------------------------

def tagged_batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    """x[i] is the indicator of position i, so the output reveals each sample's partner and
    lambda without looking inside mixup()."""
    g = torch.Generator().manual_seed(seed)
    x = torch.eye(n).view(n, 1, n, 1, 1)
    y = torch.rand(n, C, n, 1, 1, generator=g)
    mask = torch.zeros(n, C)
    mask[1::2] = 1  # alternate unannotated and fully annotated samples
    mask[0, :3] = 1
    valid = (torch.rand(n, 1, n, 1, 1, generator=g) > 0.3).float()
    return {"x": x, "y": y, "mask": mask, "valid": valid}


def partners(x_out: torch.Tensor) -> list[tuple[int, float]]:
    out = []
    for i in range(x_out.shape[0]):
        row = x_out[i].flatten()
        lam = row[i].item()
        others = [j for j in range(row.numel()) if j != i and row[j] != 0]
        out.append((others[0] if others else i, lam if others else 1.0))
    return out


def test_mixup_intersects_masks_and_mixes_targets_like_images():
    n, saw_zero_with_full = 4, False
    for seed in range(8):
        b = tagged_batch(n, seed)
        g = torch.Generator().manual_seed(seed)
        x, y, mask, valid = mixup(b["x"], b["y"], b["mask"], b["valid"], 1.0, generator=g)
        for i, (j, lam) in enumerate(partners(x)):
            assert 0.0 <= lam <= 1.0
            torch.testing.assert_close(y[i], lam * b["y"][i] + (1 - lam) * b["y"][j])
            assert torch.equal(mask[i], torch.minimum(b["mask"][i], b["mask"][j]))
            assert torch.equal(valid[i], b["valid"][i] * b["valid"][j])
            if b["mask"][i].sum() == C and b["mask"][j].sum() == 3 and j != i:
                saw_zero_with_full = True
                assert mask[i].sum() == 3
    assert saw_zero_with_full


def test_mixing_an_unannotated_sample_with_a_full_one_gives_an_empty_mask():
    x = torch.randn(2, 1, 4, 4, 4)
    y = torch.rand(2, C, 4, 4, 4)
    mask = torch.stack([torch.zeros(C), torch.ones(C)])
    for seed in range(16):
        g = torch.Generator().manual_seed(seed)
        x2, _, mask2, _ = mixup(x, y, mask, None, 0.5, generator=g)
        swapped = not torch.allclose(x2[1], x[1])
        assert torch.equal(mask2[0], torch.zeros(C))  # sample 0 has nothing to begin with
        assert torch.equal(mask2[1], torch.zeros(C) if swapped else torch.ones(C))


@pytest.mark.parametrize("beta", [0.2, 1.0, 5.0])
def test_mixup_lambda_lies_in_the_unit_interval(beta):
    lam = sample_beta(10_000, beta, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert lam.min() >= 0 and lam.max() <= 1
    assert lam.mean().item() == pytest.approx(0.5, abs=0.02)  # Beta(b, b) is symmetric


# --- Net -------------------------------------------------------------------------------------

def test_coarse_level_targets_stay_binary():
    t = (torch.rand(2, C, 32, 32, 32) > 0.5).float()
    small = resize_nearest(t, torch.Size([8, 8, 8]))
    assert small.shape == (2, C, 8, 8, 8)
    assert set(small.unique().tolist()) <= {0.0, 1.0}


def test_net_eval_returns_full_resolution_logits_and_loss_with_a_target():
    net = Net(model_cfg(SEGRESNET), ONTOLOGY).eval()
    batch = random_batch([32, 32, 32])
    with torch.no_grad():
        out = net(batch)
        only = net({"input": batch["input"]})
        pred = net.predict(batch["input"])
    assert out["logits"].shape == (2, C, 32, 32, 32) and out["logits"].dtype == torch.float32
    assert torch.isfinite(out["loss"])
    assert set(only) == {"logits"}
    torch.testing.assert_close(pred, out["logits"])


def test_net_level_weights_are_normalised_and_follow_the_outputs():
    assert Net(model_cfg(SEGRESNET), ONTOLOGY).level_weights == pytest.approx(
        [4 / 7, 2 / 7, 1 / 7])
    assert Net(model_cfg(flex([0, 0.5, 0, 1])), ONTOLOGY).level_weights == pytest.approx(
        [2 / 3, 1 / 3])
    assert Net(model_cfg(SWIN), ONTOLOGY).level_weights == [1.0]


def test_segresnet_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    net = Net(model_cfg(SEGRESNET, mixup_p=0.0), ONTOLOGY).train()
    batch = random_batch([32, 32, 32])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = net(batch)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.8 * losses[0], losses


# --- DDP -------------------------------------------------------------------------------------

DDP_MODELS = {
    "segresnet_3_levels": SEGRESNET,
    "swinunetr": SWIN,
    "flexunet_last_level": flex([0, 0, 0, 1]),
    "flexunet_three_levels": flex([0, 0.25, 0.5, 1]),
}


def checksum(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    try:
        result = {}
        for name, fields in DDP_MODELS.items():
            torch.manual_seed(0)
            net = Net(model_cfg(fields, mixup_p=1.0), ONTOLOGY).train()
            start = checksum(net)
            ddp = DistributedDataParallel(net, find_unused_parameters=False)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
            for step in range(3):
                batch = random_batch(list(fields["roi_size"]), seed=100 * step + rank)
                opt.zero_grad()
                loss = ddp(batch)["loss"]
                loss.backward()
                opt.step()
                if not torch.isfinite(loss):
                    raise RuntimeError(f"{name}: loss {loss.item()} at step {step}")
            result[name] = {"start": start, "end": checksum(net)}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_rank_ddp_steps_keep_parameters_identical_for_every_network(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert set(ranks[0]) == set(DDP_MODELS)
    for name in DDP_MODELS:
        assert ranks[0][name]["end"] == ranks[1][name]["end"], name
        assert ranks[0][name]["end"] != ranks[0][name]["start"], f"{name} did not train"
