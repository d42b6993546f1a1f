"""Cache memory: the spec's design (every rank holds its own MONAI CacheDataset with the §5.5
static transforms) against strategy B (one read-only compact store mapped by every rank).

N ranks are started with torchrun, exactly as training starts them, and each opens the same K
synthetic crops; memory is the summed PSS from /proc/<pid>/smaps_rollup (RSS would count B's
shared pages once per rank). Prints total PSS, bytes per voxel of data and the ratio
(goal: >= 100x less), and what the measured bytes/voxel predict for the spec's real dataset.

    python benchmarks/cache_memory.py [--ranks 4] [--crops 8] [--size 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

# The spec's dataset (§3): 277 crops, ~206 GB as float32 image + uint8 label (5 bytes/voxel),
# 7 ranks on a node with ~920 GB of RAM.
REAL_CROPS, REAL_VOXELS, REAL_RANKS, REAL_NODE_BYTES = 277, 206e9 / 5, 7, 920e9


def dataset(root: Path, crops: int, size: int) -> Path:
    from cellmapseg.config import from_dict
    from cellmapseg.data.inventory import write_inventory
    from cellmapseg.synthetic.generate import generate

    syn = {"n_train": max(crops, 3), "n_val": 1, "shape": [size] * 3, "shape_jitter": 0.1,
           "large_shape": [size + 16] * 3, "small_shape": [size // 2] * 3, "seed": 7}
    cfg = from_dict({"data": {"synthetic": syn}})
    datalist = generate(cfg.data.synthetic, (8.0,) * 3, root / "data", cfg.classes)
    write_inventory(from_dict({"data": {"datalist": str(datalist)}}), root / "inventory.csv")
    return root / "inventory.csv"


def run(ranks: int, crops: int, size: int) -> dict:
    from cellmapseg.config import from_dict
    from cellmapseg.data.inventory import read_inventory
    from cellmapseg.probe import memory as probe

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = read_inventory(dataset(root, crops, size)).head(crops)
        caching = dataclasses.asdict(from_dict({"caching": {
            "store_dir": str(root / "shm"), "disk_dir": str(root / "disk")}}).caching)
        out = {}
        for strategy in ("spec", "B"):
            if probe.prepare(strategy, rows, caching):
                raise SystemExit(f"no room for strategy {strategy}'s store in {root}")
            out[strategy] = probe.measure(strategy, rows, caching, ranks, [64] * 3, 2,
                                          root / strategy, from_dict({}).classes.labels)
    voxels = int(rows["voxels"].sum())
    spec_bpv = out["spec"]["total_pss_delta"] / voxels
    b_bpv = out["B"]["total_pss_delta"] / voxels
    return {
        "ranks": ranks, "crops": crops, "voxels": voxels,
        **{f"{name}_total_{kind}": out[key][f"total_{kind}_delta"]
           for name, key in (("spec", "spec"), ("b", "B")) for kind in ("pss", "rss")},
        "spec_node_bytes_per_voxel": spec_bpv, "b_node_bytes_per_voxel": b_bpv,
        "ratio": spec_bpv / b_bpv,
        # extrapolation: the spec's per-rank cost scales with ranks, B's store is one per node
        "real_spec_node_bytes": spec_bpv / ranks * REAL_RANKS * REAL_VOXELS,
        "real_b_node_bytes": b_bpv * REAL_VOXELS,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--crops", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    r = run(a.ranks, a.crops, a.size)
    mb = 2**20
    print(f"{r['ranks']} ranks x {r['crops']} crops ({r['voxels']:,} voxels), summed over ranks:")
    print(f"{'design':<40}{'PSS MiB':>10}{'RSS MiB':>10}{'bytes/voxel':>13}")
    print(f"{'spec: CacheDataset in every rank':<40}{r['spec_total_pss'] / mb:>10.1f}"
          f"{r['spec_total_rss'] / mb:>10.1f}{r['spec_node_bytes_per_voxel']:>13.2f}")
    print(f"{'B: one shared compact store':<40}{r['b_total_pss'] / mb:>10.1f}"
          f"{r['b_total_rss'] / mb:>10.1f}{r['b_node_bytes_per_voxel']:>13.2f}")
    print(f"ratio (spec / B): {r['ratio']:.0f}x less memory with B (goal >= 100x)")
    print(f"real dataset ({REAL_CROPS} crops, ~{REAL_VOXELS / 1e9:.1f} G voxels, {REAL_RANKS} "
          f"ranks, {REAL_NODE_BYTES / 1e9:.0f} GB node): spec "
          f"{r['real_spec_node_bytes'] / 1e12:.1f} TB, B {r['real_b_node_bytes'] / 1e9:.0f} GB")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
