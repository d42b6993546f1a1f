"""The pipeline's own costs at scale: one crop per size through inventory, store build,
validation, prediction and scoring, each stage in a process of its own.

The crop is tiled from an embedded-default (synthetic) label, its image an affine function of
the label plus noise, so that a per-voxel intensity band per class (the network here: the
pipeline's costs show, not a model's) finds every instance class exactly, the nuclei and the
groups composed of exact members (mito, ves, endo) alike: scoring does real matching and
Hausdorff work; the other classes' bands are shifted by about a noise step, so that their
counts have false positives and negatives to agree on. Per stage: seconds per G voxel and the
peak private (anonymous) memory of the stage's process, sampled from /proc/self/smaps_rollup
every 10 ms; the mapped store and files (shared, one copy per node) are reported apart, and
VmHWM (peak RSS, exact) beside them. Ratios between the sizes show linear time and flat memory.

    python benchmarks/scale.py --sizes 256M,1G [--json F] [--workdir DIR] [--overlap 0.25]
                               [--stages prediction,scoring]

--stages reports only those stages (the ones they need run first, unreported).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np

STAGES = ("inventory", "store", "validation", "prediction", "scoring")
SPACING = (8.0, 8.0, 8.0)
# Sliding window of the benchmark: the embedded default's overlap would quadruple the work on
# 2 CPUs; the costs per window and per block follow from these and scale the same way.
SETTINGS = {"roi": 64, "overlap": 0.25, "block": 128, "sw_batch": 4, "padding": "border"}
# Black EM padding of the large crop, as the converted crops at a volume's edge have: its first
# planes along the first and the last axis are 0, found by the inventory's scan (data.padding)
# and left out of validation and scoring (settings' "padding": none turns it off).
PAD = 3
NUC = "nuc"  # the instance class every tile must hold
NEEDS = {"inventory": (), "store": ("inventory",), "validation": ("inventory", "store"),
         "prediction": ("inventory",), "scoring": ("inventory", "prediction")}


def stages_to_run(wanted: list[str]) -> tuple[str, ...]:
    """`wanted` and the stages they need, in pipeline order."""
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown:
        raise SystemExit(f"--stages: unknown {', '.join(unknown)} (known: {', '.join(STAGES)})")
    needed = set(wanted).union(*(NEEDS[s] for s in wanted))
    return tuple(s for s in STAGES if s in needed)


def voxels(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


def shape_for(n: int) -> tuple[int, int, int]:
    """A box of about n voxels, sides multiples of 64, the last axis the longest."""
    side = max(64, int(round((n / 2) ** (1 / 3) / 64)) * 64)
    return side, side, max(64, int(round(n / side**2 / 64)) * 64)


# --- the crop ---------------------------------------------------------------------------

def source_tile(root: Path) -> tuple[np.ndarray, str]:
    """A synthetic label in which nuclei are annotated, and its annotated classes. Its border
    is background, so that no object of one tile touches its copy in the next: every
    instance's box stays within a tile."""
    from cellmapseg.config import from_dict
    from cellmapseg.data.nifti import load_array
    from cellmapseg.synthetic.generate import generate

    cfg = from_dict({"data": {"synthetic": {"n_train": 6, "n_val": 2, "seed": 11}}})
    datalist = json.loads(generate(cfg.data.synthetic, SPACING, root / "synthetic",
                                   cfg.classes).read_text())
    nuc = cfg.classes.labels[cfg.classes.channel(NUC)]
    for entry in datalist["training"] + datalist["validation"]:
        label = load_array(entry["label"]).astype(np.uint8)
        if np.count_nonzero(label == nuc) > 1000:
            inner = np.zeros_like(label)
            inner[2:-2, 2:-2, 2:-2] = label[2:-2, 2:-2, 2:-2]
            return inner, entry["annotated_classes"]
    raise SystemExit("no synthetic crop with nuclei: change the seed")


def image_of(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer intensities 40 + 10 x label value, +-3 noise: class values stay apart."""
    return (40.0 + 10.0 * label + rng.integers(-3, 4, label.shape)).astype(np.float32)


def write_nifti_planes(path: Path, shape: tuple[int, int, int], dtype: type,
                       plane: Any) -> None:
    """A .nii.gz written plane by plane along the last axis (Fortran order), never whole."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms(SPACING)
    header.set_qform(np.diag([*SPACING, 1.0]), code=1)
    header.set_sform(np.diag([*SPACING, 1.0]), code=1)
    header["vox_offset"] = 352
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header.binaryblock + b"\0" * 4)
        for z in range(shape[2]):
            fh.write(np.asfortranarray(plane(z).astype(dtype)).tobytes(order="F"))


def make_crop(root: Path, n: int) -> dict[str, Any]:
    tile, annotated = source_tile(root)
    shape = shape_for(n)
    rows, cols = np.arange(shape[0]) % tile.shape[0], np.arange(shape[1]) % tile.shape[1]

    def label_plane(z: int) -> np.ndarray:
        return tile[np.ix_(rows, cols, [z % tile.shape[2]])][..., 0]

    def image_plane(z: int) -> np.ndarray:
        plane = image_of(label_plane(z), np.random.default_rng(z))
        plane[:PAD] = 0
        return plane * (z >= PAD)

    for name, crop_shape, src in (("crop2", shape, None), ("crop1", tile.shape, tile)):
        images, labels = root / "images", root / "labels"
        images.mkdir(exist_ok=True)
        labels.mkdir(exist_ok=True)
        if src is None:
            write_nifti_planes(images / f"jrc_scale-1_{name}_0000.nii.gz", crop_shape,
                               np.float32, image_plane)
            write_nifti_planes(labels / f"jrc_scale-1_{name}.nii.gz", crop_shape, np.uint8,
                               label_plane)
        else:
            affine = np.diag([*SPACING, 1.0])
            nib.save(nib.Nifti1Image(image_of(src, np.random.default_rng(0)), affine),
                     images / f"jrc_scale-1_{name}_0000.nii.gz")
            nib.save(nib.Nifti1Image(src, affine), labels / f"jrc_scale-1_{name}.nii.gz")
    entry = {n: {"image": str(root / "images" / f"jrc_scale-1_{n}_0000.nii.gz"),
                 "label": str(root / "labels" / f"jrc_scale-1_{n}.nii.gz"),
                 "annotated_classes": annotated} for n in ("crop2", "crop1")}
    datalist = {"training": [entry["crop1"]], "validation": [entry["crop2"]]}
    (root / "datalist.json").write_text(json.dumps(datalist))
    return {"shape": shape, "voxels": int(np.prod(shape)), "datalist": str(root / "datalist.json")}


# --- one stage, in its own process ---------------------------------------------------------

class Sampler(threading.Thread):
    """Peak anonymous and mapped memory of this process, every 10 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_anon = self.peak_mapped = 0
        self.running = True

    def run(self) -> None:
        from cellmapseg.probe import smaps

        while self.running:
            m = smaps.read()
            self.peak_anon = max(self.peak_anon, m.pss_anon)
            self.peak_mapped = max(self.peak_mapped, m.pss_shmem + m.pss_file)
            time.sleep(0.01)


def band_net(mean: float, std: float, ontology: Any) -> Any:
    """Per voxel, channel c is positive where the raw intensity lies in a band around class
    c's (40 + 10 x its label value, noise +-3, image_of): (-5, +5) for a member of an instance
    class, exact; (-2.5, +7.5) for the others, which misses their voxels of noise -3 and takes
    the next value's of noise -3 (false negatives and positives)."""
    import torch

    exact = {c for name in ontology.names if ontology.is_instance(name)
             for c in ontology.members(name)}
    centre = torch.tensor([40.0 + 10.0 * v for v in ontology.labels])
    low = centre - torch.tensor([5.0 if c in exact else 2.5
                                 for c in range(ontology.num_channels)])
    high = centre + torch.tensor([5.0 if c in exact else 7.5
                                  for c in range(ontology.num_channels)])

    class Bands(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, ...) normalised input
            raw = x * std + mean
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return torch.minimum(raw - low.view(shape), high.view(shape) - raw)

    return SimpleNamespace(predict=Bands().eval())  # the interface predict_crop calls


def inference_cfg(settings: dict[str, Any]) -> Any:
    from cellmapseg.config import from_dict

    return from_dict({"inference": {"overlap": settings["overlap"],
                                    "sw_batch_size": settings["sw_batch"],
                                    "block_size": settings["block"]}})


def run_stage(stage: str, work: Path) -> None:
    import torch

    from cellmapseg.config import from_dict
    from cellmapseg.data.inventory import read_inventory

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    settings = json.loads((work / "settings.json").read_text())
    cfg = from_dict({"data": {"datalist": str(work / "data" / "datalist.json"),
                              "padding_mask": settings["padding"]},
                     "caching": {"store_dir": str(work / "shm")}})
    inventory = work / "inventory.csv"
    roi = (settings["roi"],) * 3
    if stage == "inventory":
        from cellmapseg import stages

        stages.inventory(cfg, inventory)
        return
    inv = read_inventory(inventory)
    big = inv[inv["split"] == "validation"]
    if stage == "store":
        from cellmapseg.data.caching import build_store
        from cellmapseg.runtime.torchrun import usable_cpus

        build_store("B", inv, cfg.caching, usable_cpus())
        return
    row = big.iloc[0].to_dict()
    net = band_net(float(row["image_mean"]), float(row["image_std"]), cfg.classes)
    if stage == "validation":
        from cellmapseg.data.padding import with_padding
        from cellmapseg.data.store import StoreSource, store_path
        from cellmapseg.train.validation import score_volume

        source = with_padding(StoreSource(store_path(cfg.caching.store_dir,
                                                     inv.to_dict("records")), [row["crop"]]),
                              big.head(1), cfg.data.padding_mask)
        with torch.no_grad():
            counts = score_volume(net.predict, source.get(0), roi,
                                  inference_cfg(settings).inference, torch.device("cpu"),
                                  cfg.classes.labels)
        (work / "validation_counts.json").write_text(json.dumps(counts.tolist()))
    elif stage == "prediction":
        from cellmapseg.data import predictions
        from cellmapseg.predict.crops import crop_image, predict_crop

        with predictions.writing(work / "predictions.zarr") as root, \
                crop_image(row, work, None) as (image, _):  # from the NIfTI: the stage's cost
            instances = predict_crop(net, row, image, inference_cfg(settings), roi, root,
                                     torch.device("cpu"))
        (work / "instances.json").write_text(json.dumps(instances))
    elif stage == "scoring":
        from cellmapseg.evaluate.score import evaluate

        summary = evaluate(work / "predictions.zarr", inventory, SPACING, work / "eval.csv",
                           work / "eval_summary.json", cfg.classes, crops=[row["crop"]],
                           block=settings["block"], padding=cfg.data.padding_mask)
        (work / "overall.json").write_text(json.dumps({"overall": summary["overall"]}))


def child(stage: str, work: Path, out: Path) -> None:
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    run_stage(stage, work)
    seconds = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    status = Path("/proc/self/status").read_text()
    hwm = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1]) * 1024
    out.write_text(json.dumps({"seconds": seconds, "peak_private_bytes": sampler.peak_anon,
                               "peak_mapped_bytes": sampler.peak_mapped, "vm_hwm_bytes": hwm}))


class MemoryLimit:
    """A hard memory limit for one child process: a memory cgroup (v1) of its own when this
    process may create one (root), else an address-space limit (RLIMIT_AS) of `fallback`
    bytes, so that a stage that does not bound its memory fails here instead of taking the
    machine down. `kind` says which."""

    def __init__(self, limit: int, fallback: int) -> None:
        self.limit, self.fallback, self.folder = limit, fallback, None
        self.kind = f"RLIMIT_AS {fallback / 2**30:.0f} GiB"
        mine = next((ln.split(":", 2)[2] for ln in Path("/proc/self/cgroup").read_text()
                     .splitlines() if ln.split(":")[1] == "memory"), None)
        root = Path("/sys/fs/cgroup/memory")
        if mine is None or not (root / mine.lstrip("/")).is_dir():
            return
        folder = root / mine.lstrip("/") / f"cellmapseg-scale-{os.getpid()}-{time.time_ns()}"
        try:
            folder.mkdir()
            (folder / "memory.limit_in_bytes").write_text(str(limit))
        except OSError:
            return
        self.folder, self.kind = folder, f"memory cgroup {limit / 2**30:.0f} GiB"

    def enter(self) -> None:  # in the child, before exec
        if self.folder is not None:
            (self.folder / "cgroup.procs").write_text(str(os.getpid()))
        else:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (self.fallback, self.fallback))

    def oom_kills(self) -> int:
        if self.folder is None:
            return 0
        text = (self.folder / "memory.oom_control").read_text()
        return next((int(ln.split()[1]) for ln in text.splitlines()
                     if ln.startswith("oom_kill ")), 0)

    def close(self) -> None:
        if self.folder is not None:
            self.folder.rmdir()


def measure(stage: str, work: Path, timeout: float | None = None,
            limit: int | None = None) -> dict[str, Any]:
    out = work / f"{stage}.measure.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    guard = MemoryLimit(limit, fallback=8 * 2**30) if limit else None
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", stage, str(work), str(out)],
                              env=env, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=guard.enter if guard else None)
        killed = guard.oom_kills() if guard else 0
    finally:
        if guard:
            guard.close()
    if proc.returncode != 0:
        why = f", killed at the memory limit ({guard.kind})" if killed else ""
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}{why}):\n"
                           f"{proc.stderr[-4000:]}")
    return {**json.loads(out.read_text()), "limit": guard.kind if guard else None}


def run_size(n: int, work: Path, stages: tuple[str, ...] = STAGES, timeout: float | None = None,
             limit: int | None = None, **settings: Any) -> dict[str, Any]:
    """Make the crop of about n voxels in `work` and run `stages` on it; `limit`: a hard
    memory limit (bytes) for each stage; `settings` override SETTINGS."""
    (work / "data").mkdir(parents=True, exist_ok=True)
    crop = make_crop(work / "data", n)
    (work / "settings.json").write_text(json.dumps({**SETTINGS, **settings}))
    results = {s: measure(s, work, timeout, limit) for s in stages}
    return {"crop": crop, "stages": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="256M,1G")
    p.add_argument("--json", type=Path)
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    for key, value in SETTINGS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--stages", default=",".join(STAGES), help="the stages to report")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    settings = {key: getattr(a, key) for key in SETTINGS}
    if a.child:
        child(a.child[0], Path(a.child[1]), Path(a.child[2]))
        return
    sizes, runs = [voxels(s) for s in a.sizes.split(",")], []
    to_run = stages_to_run(a.stages.split(","))  # unknown names stop here
    wanted = [s for s in STAGES if s in a.stages.split(",")]
    base = Path(tempfile.mkdtemp(prefix="cellmapseg-scale-", dir=a.workdir))
    try:
        for n in sizes:
            work = base / f"size_{n}"
            run = run_size(n, work, to_run, **settings)
            run["stages"] = {s: run["stages"][s] for s in wanted}
            runs.append(run)
            shutil.rmtree(work)  # stores and predictions of GBs: one size at a time
            print(f"{run['crop']['voxels']:,} voxels {run['crop']['shape']}:")
            for stage, r in run["stages"].items():
                print(f"  {stage:11s} {r['seconds']:8.1f} s "
                      f"{r['seconds'] / run['crop']['voxels'] * 2**30:8.1f} s/Gvox  private "
                      f"{r['peak_private_bytes'] / 2**30:5.2f} GiB  mapped "
                      f"{r['peak_mapped_bytes'] / 2**30:5.2f} GiB  VmHWM "
                      f"{r['vm_hwm_bytes'] / 2**30:5.2f} GiB")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report = {"sizes": [r["crop"]["voxels"] for r in runs], "settings": settings, "stages": {
        s: {"peak_bytes": [r["stages"][s]["peak_private_bytes"] for r in runs],
            "mapped_bytes": [r["stages"][s]["peak_mapped_bytes"] for r in runs],
            "vm_hwm_bytes": [r["stages"][s]["vm_hwm_bytes"] for r in runs],
            "seconds_per_gvox": [r["stages"][s]["seconds"] / r["crop"]["voxels"] * 2**30
                                 for r in runs]} for s in wanted}}
    if len(runs) > 1:
        print(f"\nfrom {report['sizes'][0]:,} to {report['sizes'][-1]:,} voxels "
              f"({report['sizes'][-1] / report['sizes'][0]:.1f}x): goals memory <= 1.25x, "
              "time per voxel <= 1.3x, <= 2 GiB at 1 G voxels")
        for s, r in report["stages"].items():
            print(f"  {s:11s} private memory {r['peak_bytes'][-1] / r['peak_bytes'][0]:5.2f}x  "
                  f"seconds per voxel {r['seconds_per_gvox'][-1] / r['seconds_per_gvox'][0]:5.2f}x")
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
