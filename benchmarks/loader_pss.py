"""Loader memory over a long run: summed PSS of N ranks x W DataLoader workers (strategy B).

The ranks are started with torchrun, as training starts them; each builds its training loader
with the package's own `make_data` (strategy B: one read-only compact store, in /dev/shm when it
is writable, memory-mapped by every rank and worker) and draws patches. After a warm-up, and
then every `--every` patches, all ranks meet at a barrier and read /proc/<pid>/smaps_rollup of
themselves and of their worker processes; rank 0 sums them. Prints the summed PSS after the
warm-up and at the end, and the growth (goal: < 5 % over 2,000 patches). Growth here would be
copy-on-read: workers touching Python objects they inherited from their rank, which dirties
(and so copies) the pages holding them.

`--control` plants exactly that defect, to show the measurement sees it: every item also reads
its share of a list of small Python objects built in the rank before the workers fork.

    python benchmarks/loader_pss.py [--ranks 2] [--workers 2] [--patches 2000] [--warmup 400]
        [--every 400] [--control] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROI, NUM_SAMPLES, BATCH = 32, 4, 2
CONTROL_OBJECTS = 2_000_000


def dataset(root: Path, crops: int, size: int) -> Path:
    from cellmapseg.config import from_dict
    from cellmapseg.data.inventory import write_inventory
    from cellmapseg.synthetic.generate import generate

    syn = {"n_train": crops, "n_val": 1, "shape": [size] * 3, "large_shape": [size + 8] * 3,
           "small_shape": [size // 3, size, size], "seed": 11}
    cfg = from_dict({"data": {"synthetic": syn}})
    datalist = generate(cfg.data.synthetic, (8.0,) * 3, root / "data", cfg.classes)
    write_inventory(from_dict({"data": {"datalist": str(datalist)}}), root / "inventory.csv")
    return root / "inventory.csv"


def store_root(root: Path) -> Path:
    """Strategy B's usual home (/dev/shm) when writable, else a folder beside the data."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="cellmapseg-loader-pss-", dir=shm))
    return root / "shm"


def run(ranks: int = 2, workers: int = 2, patches: int = 2000, warmup: int = 400,
        every: int = 400, control: bool = False, crops: int = 8, size: int = 48,
        timeout: float = 600) -> dict:
    """Start the ranks, return rank 0's record (samples of the summed PSS)."""
    with tempfile.TemporaryDirectory(prefix="cellmapseg-loader-pss-") as tmp:
        root = Path(tmp)
        store = store_root(root)
        try:
            inventory = dataset(root, crops, size)
            per_step = BATCH * NUM_SAMPLES * ranks
            items = math.ceil((warmup + patches) / (NUM_SAMPLES * ranks)) * ranks
            spec = {"inventory": str(inventory), "store_dir": str(store), "workers": workers,
                    "ranks": ranks, "warmup": warmup, "patches": patches, "every": every,
                    "per_step": per_step, "sub_epochs": math.ceil(items / crops) + 1,
                    "control": control}
            (root / "spec.json").write_text(json.dumps(spec))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                   f"--nproc_per_node={ranks}", __file__, "--rank", str(root / "spec.json"),
                   str(root / "out.json")]  # torchrun_command's launch, with a script
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode != 0:
                raise RuntimeError(f"loader ranks failed (exit {proc.returncode}):\n"
                                   f"{proc.stderr[-4000:]}")
            result = json.loads((root / "out.json").read_text())
            result["wall_seconds"] = time.perf_counter() - start
            return result
        finally:
            shutil.rmtree(store, ignore_errors=True)


# --- inside each rank ---------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _plant_control(dataset_obj) -> None:  # the loader's PatchDataset
    """Give the dataset a list of Python objects that each item partly reads (the defect)."""
    objects = [str(i) for i in range(CONTROL_OBJECTS)]
    share = CONTROL_OBJECTS // len(dataset_obj)
    cls = type(dataset_obj)
    plain = cls.__getitem__

    def getitem(self, key):
        _, index = key if isinstance(key, tuple) else (0, key)
        start = (index * share) % CONTROL_OBJECTS
        sum(len(s) for s in objects[start:start + share])  # touches refcounts: pages copy
        return plain(self, key)

    dataset_obj.__class__ = type(cls.__name__, (cls,), {"__getitem__": getitem})


def rank_main(spec_path: str, out_path: str) -> None:
    import torch.distributed as dist

    from cellmapseg.config import from_dict
    from cellmapseg.data.inventory import read_inventory
    from cellmapseg.probe import smaps
    from cellmapseg.train import distributed
    from cellmapseg.train.data import make_data

    spec = json.loads(Path(spec_path).read_text())
    cfg = from_dict({
        "train": {"cpu_ranks": spec["ranks"], "num_workers": spec["workers"]},
        "models": {"m": {"network": {"type": "segresnet"}, "ds_weights": [1.0],
                         "roi_size": [ROI] * 3,
                         "num_samples": NUM_SAMPLES, "batch_size": BATCH,
                         "train_sub_epochs": spec["sub_epochs"]}},
    })
    selection = {"strategy": "B", "store_dir": spec["store_dir"],
                 "disk_dir": spec["store_dir"], "d_threshold_mb": 500}
    d = distributed.setup(0)
    data = make_data(cfg, cfg.model("m"), read_inventory(spec["inventory"]), selection, d)
    if spec["control"]:
        _plant_control(data.loader.dataset)
    data.sampler.set_epoch(0)
    batches = iter(data.loader)
    targets = list(range(spec["warmup"], spec["warmup"] + spec["patches"] + 1, spec["every"]))
    if targets[-1] != spec["warmup"] + spec["patches"]:
        targets.append(spec["warmup"] + spec["patches"])
    drawn, samples = 0, []
    for target in targets:
        while drawn < target:
            next(batches)
            drawn += spec["per_step"]
        dist.barrier()
        mine = [{"pid": p, **smaps.read(p).as_dict()} for p in _tree(os.getpid())]
        everyone = distributed.all_gather(mine)
        if d.is_main:
            procs = [m for part in everyone for m in part]
            samples.append({"patches": drawn, "processes": len(procs),
                            **{k: sum(m[k] for m in procs) for k in mine[0] if k != "pid"},
                            "per_process_pss": [m["pss"] for m in procs]})
        dist.barrier()
    if d.is_main:
        first, last = samples[0], samples[-1]
        Path(out_path).write_text(json.dumps({
            "ranks": d.world, "workers_per_rank": spec["workers"], "strategy": data.strategy,
            "store_dir": spec["store_dir"], "control": spec["control"],
            "warmup_patches": first["patches"], "end_patches": last["patches"],
            "pss_after_warmup": first["pss"], "pss_end": last["pss"],
            "growth_bytes": last["pss"] - first["pss"],
            "growth": (last["pss"] - first["pss"]) / first["pss"], "samples": samples,
        }, indent=1))
    del batches
    distributed.teardown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--patches", type=int, default=2000, help="patches drawn after the warm-up")
    p.add_argument("--warmup", type=int, default=400)
    p.add_argument("--every", type=int, default=400)
    p.add_argument("--control", action="store_true", help="plant copy-on-read growth")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    r = run(a.ranks, a.workers, a.patches, a.warmup, a.every, a.control)
    mb = 2**20
    print(f"{r['ranks']} ranks x {r['workers_per_rank']} workers, strategy {r['strategy']}"
          f"{' (control: planted copy-on-read)' if r['control'] else ''}, summed PSS:")
    for s in r["samples"]:
        print(f"  after {s['patches']:>5} patches: {s['pss'] / mb:8.1f} MiB "
              f"(anon {s['pss_anon'] / mb:.1f}, shmem {s['pss_shmem'] / mb:.1f}, "
              f"file {s['pss_file'] / mb:.1f}; {s['processes']} processes)")
    print(f"growth after warm-up: {r['growth_bytes'] / mb:+.2f} MiB ({100 * r['growth']:+.2f} %) "
          f"over {r['end_patches'] - r['warmup_patches']} patches; {r['wall_seconds']:.1f} s")
    if a.json:
        a.json.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rank":
        from cellmapseg.runtime.torchrun import die_with_parent

        die_with_parent()
        rank_main(sys.argv[2], sys.argv[3])
    else:
        main()
