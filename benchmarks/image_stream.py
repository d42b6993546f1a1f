"""Reading a crop's .nii.gz for prediction: slab by slab through nibabel's proxy (the old
stream_image) against one sequential pass (data.nifti.stream_voxels), with each decompressor.

nibabel's proxy has no random access into a gzip stream, so every slab decompresses the file
from its start: time grows with the square of the crop. One pass is linear. The crop sizes
differ by `--sizes`; the old method's slab is `--slab-mb` of float32 (256 MiB in the old code:
the real crops' 8 G voxels are 127 such slabs; here a smaller slab makes the same shape of cost
on small files). Prints seconds per G voxel and the ratio between the sizes for each method.

    python benchmarks/image_stream.py --sizes 16M,64M --slab-mb 16 [--json F]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from unittest import mock

import nibabel as nib
import numpy as np

from cellmapseg.data import nifti


def voxels(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


def write_crop(path: Path, n: int) -> Path:
    """An EM-like float32 crop of about n voxels (integer intensities, gzip level 1 as the
    synthetic data and most tools write it)."""
    side = round(n ** (1 / 3))
    shape = (side, side, max(1, n // (side * side)))
    rng = np.random.default_rng(0)
    plane = rng.integers(60, 200, shape[:2]).astype(np.float32)
    image = np.empty(shape, np.float32)
    for z in range(shape[2]):  # structure along z plus noise: compresses like EM (about 1.3x)
        image[:, :, z] = plane + rng.integers(-8, 9, shape[:2])
    raw = nib.Nifti1Image(image, np.diag([8.0, 8.0, 8.0, 1.0])).to_bytes()
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    return path


def proxy_slabs(path: Path, slab_bytes: int) -> int:
    """The old stream_image: slabs along the last axis through nibabel's lazy proxy."""
    proxy = nib.load(path).dataobj
    shape = proxy.shape
    step = max(1, slab_bytes // (shape[0] * shape[1] * 4))
    total = 0
    for z in range(0, shape[2], step):
        total += np.asarray(proxy[:, :, z:z + step]).size
    return total


def opener(name: str) -> Callable[[Path], BinaryIO]:
    if name == "zlib":
        return lambda path: gzip.open(path, "rb")
    if name == "isal":
        from isal import igzip

        return lambda path: igzip.open(path, "rb")
    import rapidgzip  # all CPUs

    threads = len(os.sched_getaffinity(0))
    return lambda path: rapidgzip.open(str(path), parallelization=threads)


@contextmanager
def decompressor(name: str) -> Iterator[None]:
    """Make stream_voxels use `name` for .gz files."""
    with mock.patch.object(nifti, "_open_stream", opener(name)):
        yield


def one_pass(path: Path) -> int:
    return sum(chunk.size for chunk in nifti.stream_voxels(path))


def available() -> list[str]:
    names = ["zlib"]
    for module in ("isal", "rapidgzip"):
        try:
            __import__(module)
            names.append(module)
        except ImportError:
            print(f"({module} not installed: not measured)")
    return names


def measure(path: Path, slab_bytes: int, methods: list[str]) -> dict[str, float]:
    n = int(np.prod(nib.load(path).shape))
    out = {}
    start = time.perf_counter()
    assert proxy_slabs(path, slab_bytes) == n
    out["proxy slabs (old)"] = time.perf_counter() - start
    for name in methods:
        with decompressor(name):
            start = time.perf_counter()
            assert one_pass(path) == n
            out[f"one pass, {name}"] = time.perf_counter() - start
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="16M,64M")
    p.add_argument("--slab-mb", type=float, default=16)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    sizes = [voxels(s) for s in a.sizes.split(",")]
    methods = available()
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = write_crop(Path(tmp) / f"crop_{n}.nii.gz", n)
            real = int(np.prod(nib.load(path).shape))
            print(f"{real:,} voxels, {path.stat().st_size / 2**20:.0f} MiB gzip, slabs of "
                  f"{a.slab_mb:g} MiB")
            for method, seconds in measure(path, int(a.slab_mb * 2**20), methods).items():
                rows.setdefault(method, []).append(seconds / real * 2**30)
                print(f"  {method:22s} {seconds:7.2f} s  {seconds / real * 2**30:7.1f} s/Gvox")
            path.unlink()
    base = rows["one pass, zlib"]
    print(f"\nseconds per G voxel, {sizes[-1] / sizes[0]:g}x the voxels "
          "(ratio 1.0 = linear; vs zlib one pass at the largest size):")
    for method, per in rows.items():
        print(f"  {method:22s} growth {per[-1] / per[0]:5.2f}x   "
              f"time vs one pass (zlib) {per[-1] / base[-1]:5.2f}x")
    if a.json:
        a.json.write_text(json.dumps({"sizes": sizes, "seconds_per_gvox": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
