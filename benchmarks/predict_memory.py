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

SW_BATCH = 32


def model():  # a torch module
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


def run_monai(image_path: Path, roi: int, overlap: float) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(2)
    image = np.load(image_path)
    x = torch.from_numpy((image.astype(np.float32) - 126.0) / 73.0)[None, None]
    del image
    start = time.perf_counter()
    with torch.no_grad():
        out = sliding_window_inference(x, [roi] * 3, SW_BATCH, model(), overlap, mode="gaussian")
        masks = (out[0] > 0).to(torch.uint8)  # sigmoid > 0.5
    return {"seconds": time.perf_counter() - start, "foreground": int(masks.sum())}


def run_ours(image_path: Path, out_dir: Path, roi: int, overlap: float, block: int) -> dict:
    import torch
    import zarr

    from cellmapseg.blockwise import ScratchArray
    from cellmapseg.config import from_dict
    from cellmapseg.predict.blocks import predict_blocks
    from cellmapseg.predict.window import binarise

    torch.set_num_threads(2)
    cfg = from_dict({"inference": {"overlap": overlap, "sw_batch_size": SW_BATCH}}).inference
    image = ScratchArray(image_path)
    group = zarr.open_group(str(out_dir / "pred.zarr"), mode="w", zarr_format=2)
    arrays = [group.create_array(f"c{c}", shape=image.shape, chunks=(64,) * 3, dtype=np.uint8,
                                 fill_value=0) for c in range(14)]
    net, foreground = model(), 0
    start = time.perf_counter()
    with torch.no_grad():
        for core, logits in predict_blocks(net, image, 126.0, 73.0, [roi] * 3, cfg, [block] * 3,
                                           torch.device("cpu")):
            masks = binarise(logits[None], [0.5] * 14)[0].numpy().astype(np.uint8)
            foreground += int(masks.sum())
            for c, arr in enumerate(arrays):
                arr[core] = masks[c]
    return {"seconds": time.perf_counter() - start, "foreground": foreground}


def child(variant: str, size: int, roi: int, block: int, overlap: float) -> dict:
    """Run one variant in a fresh process; return its figures and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image.npy"
        make_image(image, size)
        proc = subprocess.run([sys.executable, __file__, "--child", variant, str(image), tmp,
                               "--roi", str(roi), "--block", str(block), "--overlap",
                               str(overlap)], capture_output=True, text=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        if proc.returncode < 0:  # killed, e.g. by the kernel's OOM killer: report how far it got
            return {"killed_by_signal": -proc.returncode, "peak_rss_bytes": peak,
                    "seconds": float("nan"), "foreground": None}
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_rss_bytes"] = peak
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--only", choices=["ours", "monai"])
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--roi", type=int, default=32)
    p.add_argument("--block", type=int, default=160)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    if a.child:
        variant, image, tmp = a.child
        r = (run_ours(Path(image), Path(tmp), a.roi, a.overlap, a.block) if variant == "ours"
             else run_monai(Path(image), a.roi, a.overlap))
        print(json.dumps(r))
        return
    results = {"size": a.size, "roi": a.roi, "block": a.block, "overlap": a.overlap}
    # ours first: ru_maxrss of children is a running maximum over all children
    for variant in ("ours", "monai"):
        if a.only in (None, variant):
            results[variant] = child(variant, a.size, a.roi, a.block, a.overlap)
            r = results[variant]
            gib = r["peak_rss_bytes"] / 2**30
            killed = r.get("killed_by_signal")
            status = f"killed by signal {killed}" if killed else "ok"
            print(f"{variant:>6}: {r['seconds']:.1f} s, peak RSS {gib:.2f} GiB ({status})")
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
