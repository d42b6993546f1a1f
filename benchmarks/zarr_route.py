"""The Zarr route's own costs at scale: one challenge crop read from the Zarr layout and converted
(cellmapseg.data.convert: EM cut, labels 4 -> 8 nm by the thin-class rule, NIfTI written), the
same crop referenced, scanned by the inventory and written into the training store straight
from the Zarr (no copy), and
one test crop predicted at 8 nm packed onto a 4 nm ground-truth grid (cellmapseg.submit.pack,
exact placement), each in a process of its own.

Per stage and size: wall seconds and the process's peak memory, both its VmHWM (peak RSS, exact;
it counts the file pages it maps) and its peak anonymous memory (RssAnon, sampled every 10 ms:
what it holds beyond the page cache). Sizes are voxels at the 8 nm training level; the crop's
labels are 8x that many at 4 nm. Ratios between sizes show what grows with the crop.

    python benchmarks/zarr_route.py --sizes 16M,128M [--stages convert,store,pack] [--json F]
        [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cellmapseg.challenge_layout import crop_path, dataset_path
from cellmapseg.data.ngff import multiscale_attrs

DATASET = "jrc_bench-1"
FINE, TRAIN = (4.0, 4.0, 4.0), (8.0, 8.0, 8.0)
CHUNK = 128


def voxels(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


def shape_for(n: int) -> tuple[int, int, int]:
    """A crop of about n voxels at 8 nm, shaped like the real ones (flat in z)."""
    z = max(8, round((n / 4) ** (1 / 3)))
    y = max(8, round((n / z) ** 0.5))
    return z, y, max(8, round(n / (z * y)))


def _array(group: zarr.Group, path: str, shape: tuple[int, ...], attrs: dict) -> zarr.Array:
    arr = group.create_array(path, shape=shape, dtype=np.uint8, chunks=(CHUNK,) * 3,
                             fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})
    arr.attrs.update(attrs)
    return arr


def _fill(arr: zarr.Array, plane) -> None:
    for z in range(0, arr.shape[0], CHUNK):
        arr[z:z + CHUNK] = plane(z, min(z + CHUNK, arr.shape[0]))


def _lumen(z0: int, z1: int, shape: tuple[int, ...]) -> np.ndarray:
    """Spheres of radius 12 fine voxels on a 32-voxel lattice with 1-voxel membranes."""
    zz, yy, xx = np.ogrid[z0:z1, 0:shape[1], 0:shape[2]]
    d = ((zz % 32 - 16) ** 2 + (yy % 32 - 16) ** 2 + (xx % 32 - 16) ** 2)
    return d < 144


def make_dataset(root: Path, n: int) -> dict[str, Any]:
    """EM s0 (4 nm) and s1 (8 nm) around one crop (ecs, mito_mem, mito_lum at 4 nm) of about n
    voxels at 8 nm, with 8 voxels of EM context, the crop off the 8 nm grid by one fine voxel."""
    crop8 = shape_for(n)
    em8 = tuple(c + 16 for c in crop8)
    fine = tuple(2 * c for c in crop8)
    group = zarr.open_group(dataset_path(root, DATASET), mode="w", zarr_format=2)
    em = group.require_group("recon-1/em/fibsem-uint8")
    em.attrs.update(multiscale_attrs(["s0", "s1"], [FINE, TRAIN], [(0.0,) * 3, (2.0,) * 3]))
    rng = np.random.default_rng(0)
    for name, shape in (("s0", tuple(2 * e for e in em8)), ("s1", em8)):
        arr = _array(em, name, shape, {})
        _fill(arr, lambda a, b, s=shape: rng.integers(0, 256, (b - a, *s[1:]), dtype=np.uint8))
    # first fine voxel edge at EM s0 voxel 17 (8.5 training voxels in): off the 8 nm grid
    translation = tuple(-2.0 + 17 * 4 + 2.0 for _ in range(3))
    crop = group.require_group(crop_path(1))
    names = ("ecs", "mito_mem", "mito_lum")
    crop.attrs.update({"cellmap": {"annotation": {"version": "0.1.1", "class_names": names}}})
    for name in names:
        cls = crop.require_group(name)
        cls.attrs.update({**multiscale_attrs(["s0"], [FINE], [translation]), "cellmap": {
            "annotation": {"class_name": name, "annotation_type": {
                "type": "semantic_segmentation", "encoding": {"absent": 0, "present": 1}}}}})
        arr = _array(cls, "s0", fine, {})

        def plane(a: int, b: int, name: str = name) -> np.ndarray:
            inner = _lumen(a, b, fine)
            if name == "mito_lum":
                return inner.astype(np.uint8)
            outer = np.zeros_like(inner)
            for axis in range(3):  # a 1-voxel shell: neighbours of the lumen
                outer |= np.roll(inner, 1, axis) | np.roll(inner, -1, axis)
            shell = outer & ~inner
            return (shell if name == "mito_mem" else ~outer).astype(np.uint8)
        _fill(arr, plane)
    manifest = root / "train.csv"
    rows = [f"1,{DATASET},{name},[4.0;4.0;4.0],[{';'.join(map(str, translation))}],"
            f"[{';'.join(map(str, fine))}]" for name in names]
    manifest.write_text("crop_name,dataset,class_label,voxel_size,translation,shape\n"
                        + "\n".join(rows) + "\n")
    return {"crop_8nm": crop8, "crop_4nm": fine, "manifest": str(manifest),
            "translation": translation}


CONVERT = """
import sys
from pathlib import Path
from cellmapseg.config import from_dict
from cellmapseg.data.convert import convert
root = Path(sys.argv[1])
convert(root, root / "train.csv", from_dict({}).classes, (8.0, 8.0, 8.0),
        root / "out" / "datalist.json", [1])
"""

# The Zarr route without a copy: references, the inventory's scan and the training store read
# the crop straight from the Zarr (one process: its peak is the largest of the three), twice
# (listed as a training and a validation crop).
STORE = """
import sys
from pathlib import Path
from cellmapseg.config import from_dict
from cellmapseg.data.convert import convert
from cellmapseg.data.inventory import read_inventory, write_inventory
from cellmapseg.data.store import ensure_store
root = Path(sys.argv[1])
import json, shutil
datalist = convert(root, root / "train.csv", from_dict({}).classes, (8.0, 8.0, 8.0),
                   root / "refs" / "datalist.json", [1], nifti=False)
# a datalist needs a training crop too: the same crop again, under another crop name
listed = json.loads(datalist.read_text())
entry = dict(listed["validation"][0])
for key in ("image", "label"):
    again = entry[key].replace("_crop1", "_crop2")
    shutil.copy(entry[key], again)
    entry[key] = again
listed["training"] = [entry]
datalist.write_text(json.dumps(listed))
cfg = from_dict({"data": {"datalist": str(datalist)}})
write_inventory(cfg, root / "inventory.csv")
ensure_store(root / "store", read_inventory(root / "inventory.csv").to_dict("records"))
"""

PACK = """
import sys
from pathlib import Path
import numpy as np
from cellmapseg.config import from_dict
from cellmapseg.data import predictions
from cellmapseg.data.manifest import read_manifest
from cellmapseg.submit.pack import pack
root = Path(sys.argv[1])
cfg = from_dict({})
rows = read_manifest(root / "test.csv")
pack(root / "pred.zarr", rows, cfg.classes, root / "submission.zip")
"""


def make_prediction(root: Path, info: dict[str, Any], target_nm: float = 4.0) -> None:
    """An 8 nm prediction store of the crop's box plus one voxel of context (every class of the
    default ontology's `mito` group), and a test manifest asking for mito_lum and mito on the
    crop's box at `target_nm` (first voxel centre half a voxel inside the box)."""
    shape = tuple(c + 2 for c in info["crop_8nm"])
    t8 = tuple(2.0 + 8.0 * 7 for _ in range(3))  # EM s1 voxel 7: one before the crop's
    store = zarr.open_group(root / "pred.zarr", mode="w", zarr_format=2)
    group = store.require_group("crop1")
    for name in ("mito_lum", "mito"):
        arr = group.create_array(name, shape=shape, dtype=np.uint8, chunks=(CHUNK,) * 3,
                                 fill_value=0)
        arr.attrs.update({"voxel_size": list(TRAIN), "translation": list(t8)})
        _fill(arr, lambda a, b: _lumen(2 * a, 2 * b, tuple(2 * s for s in shape))[::2, ::2, ::2]
              .astype(np.uint8))
    k = 4.0 / target_nm
    edge = [t - 2.0 for t in info["translation"]]  # the box's low corner
    tr = ";".join(str(e + target_nm / 2) for e in edge)
    shape = ";".join(str(round(n * k)) for n in info["crop_4nm"])
    rows = [f"1,{DATASET},{name},[{target_nm};{target_nm};{target_nm}],[{tr}],[{shape}]"
            for name in ("mito_lum", "mito")]
    (root / "test.csv").write_text("crop_name,dataset,class_label,voxel_size,translation,shape\n"
                                   + "\n".join(rows) + "\n")


def run(code: str, root: Path) -> dict[str, float]:
    """Wall seconds, VmHWM and peak RssAnon (MiB) of `code` in a process of its own."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)])
    peak = [0]

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.01)

    thread = threading.Thread(target=sample)
    thread.start()
    rc = proc.wait()
    thread.join()
    if rc:
        raise SystemExit(f"stage failed with exit status {rc}")
    wall = time.perf_counter() - start
    hwm = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over children
    return {"seconds": round(wall, 1), "peak_rss_mib": round(hwm / 1024),
            "peak_anon_mib": round(peak[0] / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16M,128M")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--stages", default="convert,store,pack",
                    help="which of convert (NIfTI copy), store (references, inventory and "
                    "training store read in place), pack to run")
    ap.add_argument("--target-nm", type=float, default=4.0, help="test crop voxel size (pack)")
    args = ap.parse_args()
    results = []
    for text in args.sizes.split(","):
        root = Path(tempfile.mkdtemp(prefix="zarr-route-", dir=args.workdir))
        try:
            info = make_dataset(root, voxels(text))
            make_prediction(root, info, args.target_nm)
            # ru_maxrss is the maximum over all children so far: run each stage in a fresh
            # interpreter that reports its own (python -c ... prints nothing, so wrap)
            row: dict[str, Any] = {"size": text, "crop_8nm": info["crop_8nm"],
                                   "crop_4nm": info["crop_4nm"], "target_nm": args.target_nm}
            for stage in args.stages.split(","):
                row[stage] = run_fresh({"convert": CONVERT, "store": STORE, "pack": PACK}[stage],
                                      root)
            print(json.dumps(row), flush=True)
            results.append(row)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def run_fresh(code: str, root: Path) -> dict[str, float]:
    """`run` in a child of its own, so that its VmHWM is this stage's alone."""
    out = subprocess.run([sys.executable, __file__, "--_stage", code, str(root)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_stage":
        print(json.dumps(run(sys.argv[2], Path(sys.argv[3]))))
    else:
        main()
