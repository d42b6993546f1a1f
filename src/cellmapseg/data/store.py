"""A read-only, memory-mappable store of compact crops: one data file plus an index.

Layout of `<dir>/cellmapseg-store-<fingerprint>/`:
  data.bin    every crop's image (compact dtype) then label (uint8), Fortran order (the order of
              the NIfTI files, so each is streamed straight in), each 4 KiB-aligned
  index.json  written last: fingerprint, total size, per-crop shape/dtype/offsets/statistics

A store is complete when index.json exists, its fingerprint matches the crops asked for and
data.bin has the recorded size; anything else (a killed build, a truncated file) is rebuilt.
The build writes each crop in place at its offset, `workers` crops at a time, decompressing each
file once (no whole crop in memory, no second copy). Builds take an exclusive file lock, so
processes that race wait for the first and then reuse it. Mapping the file read-only (mmap
ACCESS_READ) means no process ever writes a page, so the page cache (or tmpfs) holds one copy
that every rank and DataLoader worker shares.

A process that maps a store holds a shared lock on its `inuse.lock`. Building a store removes
the other stores in its folder (older fingerprints: 80 GB each in /dev/shm at the real scale)
unless one of them is in use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellmapseg.atomic import write_json
from cellmapseg.data import volume_io
from cellmapseg.data.loading import mask_from_string, row_channels, row_mask
from cellmapseg.data.volumes import Volume
from cellmapseg.errors import InputError

ALIGN = 4096
FORMAT_VERSION = 3  # 3: each crop records its number of channels
log = logging.getLogger(__name__)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    """Identity of a set of crops: names, files (size and mtime) and compact layout."""
    parts = []
    for r in rows:
        files = [Path(r["image"]), Path(r["label"])]
        stats = [(f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        parts.append([r["crop"], str(files[0]), str(files[1]), int(r["d"]), int(r["h"]),
                      int(r["w"]), str(r["compact_image_dtype"]), row_channels(r), stats])
    blob = json.dumps([FORMAT_VERSION, parts]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def store_bytes(rows: Sequence[Mapping[str, Any]]) -> int:
    """Size data.bin will have for these crops."""
    total = 0
    for r in rows:
        voxels = int(r["d"]) * int(r["h"]) * int(r["w"])
        total += _aligned(voxels * np.dtype(r["compact_image_dtype"]).itemsize) + _aligned(voxels)
    return total


@dataclass(frozen=True)
class StoreInfo:
    path: Path
    reused: bool
    total_bytes: int


PREFIX = "cellmapseg-store-"


def store_path(root: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    return Path(root) / f"{PREFIX}{fingerprint(rows)}"


def is_complete(path: Path, fp: str | None = None) -> bool:
    index_file, data_file = path / "index.json", path / "data.bin"
    if not (index_file.is_file() and data_file.is_file()):
        return False
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        index.get("version") == FORMAT_VERSION
        and (fp is None or index.get("fingerprint") == fp)
        and data_file.stat().st_size == index.get("total_bytes")
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_store(root: str | Path, rows: Sequence[Mapping[str, Any]],
                 workers: int = 1) -> StoreInfo:
    """Reuse the complete store for `rows` under `root`, or (re)build it from `workers` crops
    at a time (after removing the folder's stores of other fingerprints that nothing maps)."""
    rows = list(rows)
    fp = fingerprint(rows)
    path = Path(root) / f"{PREFIX}{fp}"
    with _locked(path):
        if is_complete(path, fp):
            return StoreInfo(path, reused=True, total_bytes=store_bytes(rows))
        remove_stale(Path(root), keep=path)
        _build(path, rows, fp, workers)
    return StoreInfo(path, reused=False, total_bytes=store_bytes(rows))


def _in_use(path: Path) -> Path:
    return path / "inuse.lock"


def remove_stale(root: Path, keep: Path) -> list[Path]:
    """Remove the stores in `root` other than `keep` that no process maps; return them."""
    removed = []
    for other in sorted(root.glob(f"{PREFIX}*")):
        if other == keep or not other.is_dir():
            continue
        with open(_in_use(other), "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("store %s is in use by another process: kept", other)
                continue
            size = sum(f.stat().st_size for f in other.iterdir() if f.is_file())
            shutil.rmtree(other)
            other.with_name(other.name + ".lock").unlink(missing_ok=True)
        log.info("removed the stale store %s (%s; another set of crops)", other, _size(size))
        removed.append(other)
    return removed


def _size(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (so small stores and small
    free space never both read "0.00 GiB")."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} bytes"


def check_space(path: Path, needed: int) -> None:
    free = shutil.disk_usage(path).free
    if needed > free:
        raise InputError(
            f"caching: {path} has {_size(free)} free but the store needs {_size(needed)} "
            "(set caching.store_dir or choose another strategy)"
        )


def _build(path: Path, rows: list[Mapping[str, Any]], fp: str, workers: int) -> None:
    if path.exists():
        shutil.rmtree(path)  # incomplete or stale: never patch a store in place
    total = store_bytes(rows)
    check_space(path.parent, total)
    path.mkdir(parents=True)
    tmp = path / "data.bin.tmp"
    entries, offset = [], 0
    for row in rows:
        entry = _entry(row, offset)
        entries.append(entry)
        offset = entry["label_offset"] + _aligned(int(np.prod(entry["shape"])))
    try:
        with open(tmp, "wb") as fh:
            fh.truncate(total)  # sparse: every crop is written at its offset below
            fd = fh.fileno()
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(rows)))) as pool:
                list(pool.map(lambda job: _write_crop(fd, *job), zip(rows, entries, strict=True)))
        os.replace(tmp, path / "data.bin")
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise InputError(f"caching: {path.parent} is full while writing the store "
                             f"({_size(total)} needed)") from exc
        raise
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    write_json(path / "index.json", {
        "version": FORMAT_VERSION, "fingerprint": fp, "total_bytes": total, "crops": entries,
    })


def _entry(row: Mapping[str, Any], offset: int) -> dict[str, Any]:
    shape = [int(row["d"]), int(row["h"]), int(row["w"])]
    dtype = np.dtype(row["compact_image_dtype"])
    mask = row_mask(row)
    return {
        "name": str(row["crop"]), "shape": shape, "image_dtype": dtype.str,
        "mean": float(row["image_mean"]), "std": float(row["image_std"]),
        "annotated_classes": [int(i) for i in np.flatnonzero(mask)], "channels": mask.size,
        "image_offset": offset,
        "label_offset": offset + _aligned(int(np.prod(shape)) * dtype.itemsize),
    }


def _write_crop(fd: int, row: Mapping[str, Any], entry: Mapping[str, Any]) -> None:
    """Stream one crop's image and label into the store at their offsets (os.pwrite: the
    workers share one file descriptor)."""
    voxels = int(np.prod(entry["shape"]))
    for key, dtype, offset in (("image", np.dtype(entry["image_dtype"]), entry["image_offset"]),
                               ("label", np.dtype(np.uint8), entry["label_offset"])):
        written = 0
        for chunk in volume_io.stream_voxels(row[key]):
            data = np.ascontiguousarray(chunk.astype(dtype, copy=False))
            os.pwrite(fd, memoryview(data), offset + written * dtype.itemsize)
            written += data.size
        if written != voxels:
            raise InputError(f"{row[key]}: {written} voxels, the inventory says {voxels}")


class StoreSource:
    """Volumes served from a store. `persistent=True` keeps one read-only mapping per process
    (strategy B); `persistent=False` maps per access and lets it go with the volume (C)."""

    def __init__(self, path: str | Path, names: Sequence[str] | None = None,
                 persistent: bool = True) -> None:
        self.path, self.persistent = Path(path), persistent
        if not is_complete(self.path):
            raise InputError(f"caching: store {self.path} is missing or incomplete")
        crops = json.loads((self.path / "index.json").read_text())["crops"]
        by_name = {c["name"]: c for c in crops}
        missing = [n for n in (names or []) if n not in by_name]
        if missing:
            raise InputError(f"caching: store {self.path} lacks crops {missing}")
        self._crops = [by_name[n] for n in names] if names is not None else crops
        self._map: mmap.mmap | None = None
        # While this object lives, no build in the same folder removes the store.
        self._inuse: int | None = os.open(_in_use(self.path), os.O_CREAT | os.O_RDWR, 0o666)
        fcntl.flock(self._inuse, fcntl.LOCK_SH)

    def __del__(self) -> None:
        if getattr(self, "_inuse", None) is not None:
            os.close(self._inuse)  # releases the shared lock

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle the mapping (it would copy the data into every DataLoader worker);
        # each process maps the file itself on first access. The in-use lock stays with the
        # process that opened the store.
        return {**self.__dict__, "_map": None, "_inuse": None}

    def __len__(self) -> int:
        return len(self._crops)

    def names(self) -> list[str]:
        return [c["name"] for c in self._crops]

    def _mapping(self) -> mmap.mmap:
        if self.persistent and self._map is not None:
            return self._map
        with open(self.path / "data.bin", "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        if self.persistent:
            self._map = mapped
        return mapped

    def get(self, index: int) -> Volume:
        c = self._crops[index]
        buf, shape = self._mapping(), tuple(c["shape"])
        image = np.frombuffer(buf, np.dtype(c["image_dtype"]), int(np.prod(shape)),
                              c["image_offset"]).reshape(shape, order="F")
        label = np.frombuffer(buf, np.uint8, int(np.prod(shape)),
                              c["label_offset"]).reshape(shape, order="F")
        mask = mask_from_string(",".join(map(str, c["annotated_classes"])), c["name"],
                                int(c["channels"]))
        return Volume(c["name"], image, label, mask, float(c["mean"]), float(c["std"]))
