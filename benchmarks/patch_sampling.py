"""Patch sampling: the spec's MONAI CacheDataset pipeline against the compact sampler.

One process, one core, the same synthetic volumes, 128^3 patches, num_samples=4. Prints patches/s
and cached bytes per voxel for both, and the ratios (goal: >= 100x patches/s, <= 1/25 bytes).

    python benchmarks/patch_sampling.py [--volumes 3] [--size 160] [--items 6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROI = (128, 128, 128)
NUM_SAMPLES = 4


def default_ontology():
    """The default ontology (the 14 atomic classes the synthetic data labels)."""
    from cellmapseg.config import from_dict

    return from_dict({}).classes


def make_volumes(out_dir: Path, n: int, size: int) -> list[dict]:
    """Synthetic CellMap-like crops, all at least ROI-sized (the spec's pipeline cannot pad)."""
    from cellmapseg.config import from_dict
    from cellmapseg.data.datalist import read_datalist
    from cellmapseg.synthetic.generate import generate

    syn = {"n_train": max(n, 3), "n_val": 1, "shape": [size] * 3, "shape_jitter": 0.0,
           "large_shape": [size + 16] * 3, "small_shape": [size] * 3, "seed": 1}
    cfg = from_dict({"data": {"synthetic": syn}})
    entries = read_datalist(generate(cfg.data.synthetic, cfg.data.spacing_nm, out_dir,
                                     cfg.classes), "", cfg.classes.num_channels)
    return [e for e in entries if e.split == "training"][:n]


def spec_pipeline(entries: list) -> tuple[list[dict], object]:
    """The spec's §5.5 dataset: static transforms cached by CacheDataset (normalised float32 image,
    14-channel float32 one-hot label), then crop samples and per-patch flips/rot90 (§11.5 fix)."""
    import monai.transforms as mt

    from cellmapseg.probe.spec_baseline import spec_cache

    cached = spec_cache([{"image": str(e.image), "label": str(e.label)} for e in entries],
                        default_ontology().labels)
    crop = mt.RandSpatialCropSamplesd(
        keys=["image", "label"], roi_size=ROI, num_samples=NUM_SAMPLES, random_size=False
    )
    augment = mt.Compose([
        mt.RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        mt.RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        mt.RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
        mt.RandRotate90d(keys=["image", "label"], prob=0.75, max_k=3, spatial_axes=(0, 1)),
    ])
    crop.set_random_state(0)
    augment.set_random_state(0)

    def draw(i: int) -> dict:
        patches = [augment(p) for p in crop(cached[i % len(cached)])]
        return {"input": torch.stack([torch.as_tensor(p["image"]) for p in patches]),
                "target": torch.stack([torch.as_tensor(p["label"]) for p in patches])}

    return cached, draw


def bytes_per_voxel(arrays: list[tuple[object, object]]) -> float:
    total = sum(np.asarray(img).nbytes + np.asarray(lab).nbytes for img, lab in arrays)
    voxels = sum(int(np.prod(np.asarray(lab).shape[-3:])) for _, lab in arrays)
    return total / voxels


def throughput(draw, items: int) -> float:
    draw(0)  # warm-up
    start = time.perf_counter()
    for i in range(items):
        draw(i + 1)
    return items * NUM_SAMPLES / (time.perf_counter() - start)


def run(n_volumes: int, size: int, items: int) -> dict:
    from cellmapseg.data.batch import prepare_batch
    from cellmapseg.data.loading import volume_from_entry
    from cellmapseg.data.sampling import PatchDataset, collate_patches
    from cellmapseg.data.volumes import ListSource

    torch.set_num_threads(1)
    ontology = default_ontology()
    with tempfile.TemporaryDirectory() as tmp:
        entries = make_volumes(Path(tmp), n_volumes, size)
        cached, spec_draw = spec_pipeline(entries)
        volumes = [volume_from_entry(e, ontology.num_channels) for e in entries]
    spec_bpv = bytes_per_voxel([(c["image"], c["label"]) for c in cached])
    ours_bpv = bytes_per_voxel([(v.image, v.label) for v in volumes])
    ds = PatchDataset(ListSource(volumes), ROI, NUM_SAMPLES, sub_epochs=1000, seed=0)
    spec_ps = throughput(spec_draw, items)
    ours_ps = throughput(lambda i: ds[i], items * 10)
    ours_cpu_onehot = throughput(
        lambda i: prepare_batch(collate_patches([ds[i]]), ontology.labels), items)
    return {
        "volumes": len(volumes), "volume_shape": list(volumes[0].shape), "roi": list(ROI),
        "num_samples": NUM_SAMPLES, "threads": 1,
        "spec_patches_per_s": spec_ps, "ours_patches_per_s": ours_ps,
        "ours_with_cpu_onehot_patches_per_s": ours_cpu_onehot,
        "spec_bytes_per_voxel": spec_bpv, "ours_bytes_per_voxel": ours_bpv,
        "speed_ratio": ours_ps / spec_ps, "speed_ratio_with_cpu_onehot": ours_cpu_onehot / spec_ps,
        "memory_ratio": ours_bpv / spec_bpv,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--volumes", type=int, default=3)
    p.add_argument("--size", type=int, default=160, help="edge of the synthetic cubes (>= 128)")
    p.add_argument("--items", type=int, default=6, help="items (x num_samples patches) timed")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args()
    r = run(a.volumes, a.size, a.items)
    print(f"{'pipeline':<34}{'patches/s':>12}{'bytes/voxel':>14}")
    print(f"{'spec (CacheDataset, one-hot f32)':<34}{r['spec_patches_per_s']:>12.2f}"
          f"{r['spec_bytes_per_voxel']:>14.2f}")
    print(f"{'ours (compact uint8)':<34}{r['ours_patches_per_s']:>12.2f}"
          f"{r['ours_bytes_per_voxel']:>14.2f}")
    print(f"{'ours + one-hot on the CPU':<34}{r['ours_with_cpu_onehot_patches_per_s']:>12.2f}")
    print(f"speed ratio (ours / spec): {r['speed_ratio']:.0f}x  (goal >= 100x); "
          f"with CPU one-hot: {r['speed_ratio_with_cpu_onehot']:.1f}x")
    print(f"memory ratio (ours / spec): 1/{1 / r['memory_ratio']:.0f}  (goal <= 1/25)")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
