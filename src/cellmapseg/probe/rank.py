"""One rank of the memory probe, started by torchrun exactly as training ranks are.

Opens the probe crops under one caching strategy, reads every voxel (as validation
does) and draws patches, then measures its own smaps_rollup while every rank is still alive and
holding its data; rank 0 writes all ranks' figures.

    python -m torch.distributed.run ... -m cellmapseg.probe.rank SPEC.json OUT.json
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch.distributed as dist

from cellmapseg.atomic import write_json
from cellmapseg.config import CachingConfig
from cellmapseg.data.caching import open_source
from cellmapseg.data.loading import load_volume
from cellmapseg.data.sampling import PatchDataset
from cellmapseg.data.volumes import ListSource
from cellmapseg.probe import smaps
from cellmapseg.probe.spec_baseline import cached_nbytes, spec_cache


def touch(source) -> int:  # a VolumeSource
    """Read every voxel once (pages become resident) and return a checksum."""
    total = 0
    for i in range(len(source)):
        vol = source.get(i)
        total += int(vol.image.sum(dtype=np.float64)) + int(vol.label.sum(dtype=np.uint64))
        del vol
    return total


def warm_up(spec: dict) -> None:
    """Load the code paths and shared libraries a read needs before the baseline snapshot, then
    hand freed heap back to the OS, so the measured delta is the data and not the libraries."""
    row = spec["rows"][0]
    if spec["strategy"] == "spec":
        from cellmapseg.probe.spec_baseline import spec_static_transforms

        spec_static_transforms(spec["labels"])
    volume = load_volume(row)
    patches = PatchDataset(ListSource([volume]), spec["roi"], 1, 2, seed=0)
    touch(patches.source)
    for i in range(len(patches)):
        patches[i]
    dist.barrier()  # the first collective maps gloo's buffers
    del volume, patches
    release_free_memory()


def release_free_memory() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc keeps them otherwise), so
    a snapshot counts live data, not allocator leftovers of a decompression."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only; elsewhere a no-op
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    warm_up(spec)
    before = smaps.read()
    if spec["strategy"] == "spec":  # the spec's design: a CacheDataset in every rank
        held = spec_cache([{"image": r["image"], "label": r["label"]} for r in spec["rows"]],
                          spec["labels"])
        checksum = cached_nbytes(held)
    else:
        held = open_source(spec["strategy"], pd.DataFrame(spec["rows"]),
                           CachingConfig(**spec["caching"]))
        checksum = touch(held)
    if spec["patches"] and spec["strategy"] != "spec":
        source = held
        patches = PatchDataset(source, spec["roi"], 1, spec["patches"], seed=rank)
        for i in range(len(patches)):
            patches[i]
    release_free_memory()
    dist.barrier()  # every rank holds its data now
    after = smaps.read()
    record = {"rank": rank, "pid": os.getpid(), "checksum": checksum,
              "before": before.as_dict(), "after": after.as_dict()}
    gathered: list[dict | None] = [None] * world
    dist.all_gather_object(gathered, record)
    if rank == 0:
        write_json(out_path, gathered)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
