"""A read-only, memory-mappable store of compact crops: one data file plus an index.

Layout of `<dir>/cellmapseg-store-<fingerprint>/`:
  data.bin    every crop's image (compact dtype) then label (uint8), C order, each 4 KiB-aligned
  index.json  written last: fingerprint, total size, per-crop shape/dtype/offsets/statistics

A store is complete when index.json exists, its fingerprint matches the crops asked for and
data.bin has the recorded size; anything else (a killed build, a truncated file) is rebuilt.
Builds take an exclusive file lock, so ranks that race wait for the first and then reuse it.
Mapping the file read-only (mmap ACCESS_READ) means no process ever writes a page, so the page
cache (or tmpfs) holds one copy that every rank and DataLoader worker shares.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellmapseg.atomic import write_json
from cellmapseg.data.loading import load_volume, mask_from_string
from cellmapseg.data.volumes import Volume
from cellmapseg.errors import InputError

ALIGN = 4096
FORMAT_VERSION = 1


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    """Identity of a set of crops: names, files (size and mtime) and compact layout."""
    parts = []
    for r in rows:
        files = [Path(r["image"]), Path(r["label"])]
        stats = [(f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        parts.append([r["crop"], str(files[0]), str(files[1]), int(r["d"]), int(r["h"]),
                      int(r["w"]), str(r["compact_image_dtype"]), stats])
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


def store_path(root: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    return Path(root) / f"cellmapseg-store-{fingerprint(rows)}"


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


def ensure_store(root: str | Path, rows: Sequence[Mapping[str, Any]]) -> StoreInfo:
    """Reuse the complete store for `rows` under `root`, or (re)build it."""
    rows = list(rows)
    fp = fingerprint(rows)
    path = Path(root) / f"cellmapseg-store-{fp}"
    with _locked(path):
        if is_complete(path, fp):
            return StoreInfo(path, reused=True, total_bytes=store_bytes(rows))
        _build(path, rows, fp)
    return StoreInfo(path, reused=False, total_bytes=store_bytes(rows))


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


def _build(path: Path, rows: list[Mapping[str, Any]], fp: str) -> None:
    if path.exists():
        shutil.rmtree(path)  # incomplete or stale: never patch a store in place
    total = store_bytes(rows)
    check_space(path.parent, total)
    path.mkdir(parents=True)
    tmp = path / "data.bin.tmp"
    crops = []
    try:
        with open(tmp, "wb") as fh:
            for row in rows:
                crops.append(_append_crop(fh, row))
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
        "version": FORMAT_VERSION, "fingerprint": fp, "total_bytes": total, "crops": crops,
    })


def _append_crop(fh, row: Mapping[str, Any]) -> dict[str, Any]:  # binary file
    volume = load_volume(row)
    entry = {
        "name": volume.name, "shape": list(volume.shape), "image_dtype": volume.image.dtype.str,
        "mean": volume.mean, "std": volume.std,
        "annotated_classes": [int(i) for i in np.flatnonzero(volume.annotation_mask)],
    }
    for key, array in (("image_offset", volume.image), ("label_offset", volume.label)):
        entry[key] = fh.tell()
        fh.write(np.ascontiguousarray(array).tobytes())
        fh.write(b"\0" * (_aligned(array.nbytes) - array.nbytes))
    return entry


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

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle the mapping (it would copy the data into every DataLoader worker);
        # each process maps the file itself on first access.
        return {**self.__dict__, "_map": None}

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
                              c["image_offset"]).reshape(shape)
        label = np.frombuffer(buf, np.uint8, int(np.prod(shape)), c["label_offset"]).reshape(shape)
        mask = mask_from_string(",".join(map(str, c["annotated_classes"])), c["name"])
        return Volume(c["name"], image, label, mask, float(c["mean"]), float(c["std"]))
