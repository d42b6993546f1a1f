"""Memory probe → results/probe/memory.json.

Starts N ranks the way training does (torchrun, N = planned world size capped by
caching.probe_max_ranks); each opens K crops under strategies A, B, C and D and reports RSS, PSS
and USS. From these the selection derives bytes per voxel and extrapolates to the whole dataset
at the planned world size. It also measures what the spec's CacheDataset holds for one crop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from cellmapseg.atomic import write_json
from cellmapseg.config import Config
from cellmapseg.data import volume_io
from cellmapseg.data.caching import is_small
from cellmapseg.data.inventory import read_inventory
from cellmapseg.data.store import ensure_store, store_bytes
from cellmapseg.probe import host, smaps
from cellmapseg.runtime.torchrun import torchrun_command

log = logging.getLogger(__name__)
MEASURED = ("A", "B", "C", "D")
SPEC_SIDE = 96  # the spec-baseline corner: at most 96^3 voxels (0.9 M; ~55 MB cached)
VERSION = 1


def data_totals(inv: pd.DataFrame, cfg: Config) -> dict[str, Any]:
    rows = inv.to_dict("records")
    small = [r for r in rows if is_small(r, cfg.caching)]
    large = [r for r in rows if not is_small(r, cfg.caching)]
    return {
        "crops": len(rows),
        "training_crops": int((inv["split"] == "training").sum()),
        "validation_crops": int((inv["split"] == "validation").sum()),
        "voxels": int(inv["voxels"].sum()),
        "compact_bytes": int(inv["compact_bytes"].sum()),
        "store_bytes": store_bytes(rows),
        "largest_crop_bytes": int(inv["compact_bytes"].max()),
        "d_threshold_mb": cfg.caching.d_threshold_mb,
        "small_crops": len(small),
        "small_voxels": int(sum(int(r["voxels"]) for r in small)),
        "large_crops": len(large),
        "large_voxels": int(sum(int(r["voxels"]) for r in large)),
        "large_store_bytes": store_bytes(large),
        "largest_large_crop_bytes": max((int(r["compact_bytes"]) for r in large), default=0),
        "spec_cache_bytes_per_voxel_formula": 4 + 4 * cfg.classes.num_channels,
    }


def probe_rows(inv: pd.DataFrame, k: int) -> pd.DataFrame:
    """The K crops each rank opens: training crops first, in inventory order."""
    order = pd.concat([inv[inv["split"] == "training"], inv[inv["split"] != "training"]])
    return order.head(k)


def summarise_ranks(records: list[dict], voxels: int) -> dict[str, Any]:
    """Per-rank deltas (after - before opening the data) and the node totals."""
    ranks = []
    for r in records:
        before, after = smaps.Memory(**r["before"]), smaps.Memory(**r["after"])
        ranks.append({"rank": r["rank"], "before": before.as_dict(), "after": after.as_dict(),
                      "delta": (after - before).as_dict()})
    deltas = [smaps.Memory(**r["delta"]) for r in ranks]
    pss = sum(d.pss for d in deltas)
    anon = sum(d.pss_anon for d in deltas)
    mapped = sum(d.pss_file + d.pss_shmem for d in deltas)
    return {
        "ranks": ranks,
        "total_rss_delta": sum(d.rss for d in deltas),
        "total_pss_delta": pss,
        "total_uss_delta": sum(d.uss for d in deltas),
        "total_pss_anon_delta": anon,
        "total_pss_mapped_delta": mapped,
        "total_pss_after": sum(r["after"]["pss"] for r in ranks),
        "total_rss_after": sum(r["after"]["rss"] for r in ranks),
        # a rank's own heap, paid once per rank
        "private_bytes_per_voxel_per_rank": anon / len(deltas) / voxels,
        # mapped store pages: PSS splits them among the ranks, the sum is one copy per node
        "shared_bytes_per_voxel": mapped / voxels,
        "node_pss_bytes_per_voxel": pss / voxels,
        "node_rss_bytes_per_voxel": sum(d.rss for d in deltas) / voxels,
    }


def _probe_caching(cfg: Config, root: Path) -> dict[str, Any]:
    """The caching settings the probe ranks use: stores go to private probe folders."""
    c = cfg.caching
    return {**dataclasses.asdict(c), "store_dir": str(Path(c.store_dir) / root.name),
            "disk_dir": str(Path(c.disk_dir) / root.name)}


def measure(strategy: str, rows: pd.DataFrame, caching: dict[str, Any], nproc: int,
            roi: list[int], patches: int, workdir: Path, labels: Sequence[int]
            ) -> dict[str, Any]:
    """Peak memory of `nproc` ranks holding `rows` under `strategy`; `labels` are the label
    values the spec's baseline one-hots (its channels)."""
    spec = workdir / f"spec_{strategy}.json"
    out = workdir / f"ranks_{strategy}.json"
    write_json(spec, {"strategy": strategy, "rows": rows.to_dict("records"), "caching": caching,
                      "roi": roi, "patches": patches, "labels": list(labels)})
    cmd = torchrun_command(nproc, "cellmapseg.probe.rank", [spec, out])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                          "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe ranks failed for strategy {strategy} "
                           f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return summarise_ranks(json.loads(out.read_text()), int(rows["voxels"].sum()))


def spec_cache_one_crop(row: dict[str, Any], labels: Sequence[int], side: int = SPEC_SIDE
                        ) -> dict[str, Any]:
    """What the spec's CacheDataset holds per voxel, measured in this process on a bounded
    corner of one crop (at most side^3 voxels: its cost per voxel does not depend on the size,
    and the whole of a large crop would take about 116 bytes per voxel here)."""
    from cellmapseg.probe.spec_baseline import cached_nbytes, spec_cache, spec_static_transforms

    spec_static_transforms(labels)  # import MONAI first: its libraries are not the cache
    with tempfile.TemporaryDirectory(prefix="cellmapseg-spec-") as tmp:
        files = {}
        for key in ("image", "label"):
            corner = volume_io.read_corner(row[key], side)
            files[key] = str(Path(tmp) / f"{key}.nii.gz")
            nib.save(nib.Nifti1Image(corner, np.eye(4)), files[key])
        voxels = int(corner.size)
        before = smaps.read()
        items = spec_cache([files], labels)
        after = smaps.read()
    nbytes = cached_nbytes(items)
    result = {"crop": row["crop"], "region": list(corner.shape), "voxels": voxels,
              "cached_bytes": nbytes, "cached_bytes_per_voxel": nbytes / voxels,
              "uss_delta_bytes": (after - before).uss,
              "uss_bytes_per_voxel": (after - before).uss / voxels}
    del items
    return result


def run_probe(cfg: Config, inventory_csv: str | Path, out_json: str | Path) -> dict[str, Any]:
    inv = read_inventory(inventory_csv)
    world = cfg.most_ranks_per_node  # per-node costs at the densest job
    nproc = cfg.probe_ranks
    rows = probe_rows(inv, cfg.caching.probe_crops)
    roi = _probe_roi(cfg)
    result: dict[str, Any] = {
        "version": VERSION,
        "host": host.facts(cfg.caching.store_dir, cfg.caching.disk_dir),
        "world_size": world,
        "probe_ranks": nproc,
        "probe_crops": rows["crop"].tolist(),
        "probe_voxels": int(rows["voxels"].sum()),
        "probe_roi": roi,
        "data": data_totals(inv, cfg),
        "measurements": {},
        "skipped": {},
    }
    root = Path(tempfile.mkdtemp(prefix="cellmapseg-probe-"))
    caching = _probe_caching(cfg, root)
    try:
        for strategy in MEASURED:
            why = prepare(strategy, rows, caching)
            if why:
                result["skipped"][strategy] = why
                log.warning("probe: strategy %s not measured: %s", strategy, why)
                continue
            log.info("probe: %d ranks x %d crops under strategy %s", nproc, len(rows), strategy)
            result["measurements"][strategy] = measure(
                strategy, rows, caching, nproc, roi, cfg.caching.probe_patches, root,
                cfg.classes.labels)
    finally:
        for folder in (root, Path(caching["store_dir"]), Path(caching["disk_dir"])):
            shutil.rmtree(folder, ignore_errors=True)
    largest = rows.sort_values("voxels").iloc[-1].to_dict()
    result["spec_cache"] = spec_cache_one_crop(largest, cfg.classes.labels)
    write_json(out_json, result)
    return result


def _probe_roi(cfg: Config) -> list[int]:
    rois = [m.roi_size for m in cfg.models.values()] or [(64, 64, 64)]
    return [int(max(r[i] for r in rois)) for i in range(3)]


def prepare(strategy: str, rows: pd.DataFrame, caching: dict[str, Any]) -> str | None:
    """Why a strategy cannot even be probed here (no room for its probe store), else None."""
    records = rows.to_dict("records")
    folder = {"B": caching["store_dir"], "C": caching["disk_dir"], "D": caching["disk_dir"]}.get(
        strategy)
    if folder is None:
        return None
    needed = store_bytes(records)
    free = host.disk(folder)["free_bytes"]
    if needed > free:
        return (f"{folder} has {free / 2**20:.0f} MiB free, "
                f"the probe store needs {needed / 2**20:.0f} MiB")
    if strategy in ("B", "C"):
        ensure_store(folder, records)  # built once here so that ranks measure mapping only
    return None
