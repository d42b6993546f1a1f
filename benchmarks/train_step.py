"""Training step cost of one model config: step time, peak GPU memory, and loader overhead.

Loader overhead = step time with the real DataLoader (compact batches from the cache, moved
and expanded on the device) / step time with batches already on the device (goal <= 1.05).
Runs on CUDA with bf16 when available (the spec's sizes: --config config/cluster.yaml), else on
the CPU (use the embedded default's sizes there).

    python benchmarks/train_step.py --config config/cluster.yaml --model segresnet \
        --inventory results/data/inventory.csv --steps 30
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cellmapseg.config import load
from cellmapseg.data.batch import prepare_batch
from cellmapseg.data.caching import open_source
from cellmapseg.data.inventory import read_inventory
from cellmapseg.data.sampling import PatchDataset, collate_patches, seed_worker
from cellmapseg.models.net import Net
from cellmapseg.models.registry import count_parameters


def as_inputs(batch: dict, labels: tuple[int, ...], device: torch.device
              ) -> dict[str, torch.Tensor]:
    b = prepare_batch(batch, labels, device)
    return {"input": b.input, "target": b.target, "annotation_mask": b.annotation_mask,
            "valid": b.valid}


def timed_steps(net: Net, opt: torch.optim.Optimizer, batches, steps: int,
                device: torch.device) -> float:
    """Seconds per optimizer step over `steps` steps (after 3 warm-up steps)."""
    def step(inputs: dict[str, torch.Tensor]) -> None:
        net(inputs)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def run(config: Path, model: str, inventory: Path, steps: int, workers: int) -> dict:
    cfg = load(config)
    m = cfg.model(model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    inv = read_inventory(inventory)
    source = open_source("A", inv[inv.split == "training"], cfg.caching)
    dataset = PatchDataset(source, m.roi_size, m.num_samples, 10_000, cfg.seed)
    loader = DataLoader(dataset, batch_size=m.batch_size, shuffle=True, num_workers=workers,
                        collate_fn=collate_patches, worker_init_fn=seed_worker,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        drop_last=True)
    torch.manual_seed(cfg.seed)
    net = Net(m, cfg.classes).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=m.lr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    real = (as_inputs(b, cfg.classes.labels, device) for b in itertools.cycle(loader))
    with_loader = timed_steps(net, opt, real, steps, device)
    resident = as_inputs(next(iter(loader)), cfg.classes.labels, device)
    on_device = timed_steps(net, opt, itertools.repeat(resident), steps, device)
    return {
        "model": model, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "bf16": device.type == "cuda" and m.bf16, "roi": list(m.roi_size),
        "patches_per_step": m.batch_size * m.num_samples, "parameters": count_parameters(net),
        "step_s_with_loader": with_loader, "step_s_on_device": on_device,
        "loader_overhead": with_loader / on_device,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else 0,
        "workers": workers,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    p.add_argument("--model", default="segresnet")
    p.add_argument("--inventory", type=Path, default=Path("results/data/inventory.csv"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    r = run(a.config, a.model, a.inventory, a.steps, a.workers)
    print(json.dumps(r, indent=2))
    if a.json:
        a.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
