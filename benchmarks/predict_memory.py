"""Prediction memory: our block-wise sliding window against MONAI's whole-volume one.

A synthetic uint8 crop of SIZE^3 and a small 3D conv model (14 output channels). MONAI's
`sliding_window_inference` on the whole volume holds a 14-channel float32 output of the crop
(14 x 4 bytes per voxel: 7.5 GB at 512^3, 60 GB at 1024^3). Ours (cellmapseg.predict.blocks)
reads the image region by region from an .npy and writes thresholded masks to Zarr block by block.
Each variant runs in its own process; peak RSS comes from the OS (ru_maxrss of the child).

    python benchmarks/predict_memory.py --size 512            # both, and the ratios
    python benchmarks/predict_memory.py --size 1024 --only ours
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROI, BLOCK, OVERLAP, SW_BATCH = 32, 256, 0.5, 32


def model():  # noqa: ANN201 - a torch module
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(8, 14, 1)).eval()


def make_image(path: Path, size: int) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(size,) * 3,
                                    fortran_order=True)
    rng = np.random.default_rng(0)
    for z in range(0, size, 64):
        out[:, :, z:z + 64] = rng.integers(0, 253, (size, size, min(64, size - z)), np.uint8)
    out.flush()


def run_monai(image_path: Path) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(2)
    image = np.load(image_path)
    x = torch.from_numpy((image.astype(np.float32) - 126.0) / 73.0)[None, None]
    del image
    start = time.perf_counter()
    with torch.no_grad():
        out = sliding_window_inference(x, [ROI] * 3, SW_BATCH, model(), OVERLAP, mode="gaussian")
        masks = (torch.sigmoid(out[0]) > 0.5).to(torch.uint8)
    return {"seconds": time.perf_counter() - start, "foreground": int(masks.sum())}


def run_ours(image_path: Path, out_dir: Path) -> dict:
    import torch
    import zarr

    from cellmapseg.config import from_dict
    from cellmapseg.inference import binarise
    from cellmapseg.predict.blocks import predict_blocks
    from cellmapseg.predict.run import NpyRegions

    torch.set_num_threads(2)
    cfg = from_dict({"inference": {"overlap": OVERLAP, "sw_batch_size": SW_BATCH}}).inference
    image = NpyRegions(image_path)
    group = zarr.open_group(str(out_dir / "pred.zarr"), mode="w", zarr_format=2)
    arrays = [group.create_array(f"c{c}", shape=image.shape, chunks=(64,) * 3, dtype=np.uint8,
                                 fill_value=0) for c in range(14)]
    net, foreground = model(), 0
    start = time.perf_counter()
    with torch.no_grad():
        for core, logits in predict_blocks(net, image, 126.0, 73.0, [ROI] * 3, cfg, [BLOCK] * 3,
                                           torch.device("cpu")):
            masks = binarise(logits[None], [0.5] * 14)[0].numpy().astype(np.uint8)
            foreground += int(masks.sum())
            for c, arr in enumerate(arrays):
                arr[core] = masks[c]
    return {"seconds": time.perf_counter() - start, "foreground": foreground}


def child(variant: str, size: int) -> dict:
    """Run one variant in a fresh process; return its figures and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image.npy"
        make_image(image, size)
        proc = subprocess.run([sys.executable, __file__, "--child", variant, str(image), tmp],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--only", choices=["ours", "monai"])
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    if a.child:
        variant, image, tmp = a.child
        r = run_ours(Path(image), Path(tmp)) if variant == "ours" else run_monai(Path(image))
        print(json.dumps(r))
        return
    results = {"size": a.size, "roi": ROI, "block": BLOCK, "overlap": OVERLAP}
    # ours first: ru_maxrss of children is a running maximum over all children
    for variant in ("ours", "monai"):
        if a.only in (None, variant):
            results[variant] = child(variant, a.size)
            r = results[variant]
            gib = r["peak_rss_bytes"] / 2**30
            print(f"{variant:>6}: {r['seconds']:.1f} s, peak RSS {gib:.2f} GiB")
    if "ours" in results and "monai" in results:
        o, m = results["ours"], results["monai"]
        results["time_ratio"] = o["seconds"] / m["seconds"]
        results["memory_ratio"] = o["peak_rss_bytes"] / m["peak_rss_bytes"]
        results["same_foreground"] = o["foreground"] == m["foreground"]
        print(f"time ours/MONAI {results['time_ratio']:.2f} (goal <= 1.2); peak RSS ours/MONAI "
              f"{results['memory_ratio']:.2f}; same foreground: {results['same_foreground']}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
