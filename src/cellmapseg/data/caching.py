"""Caching strategies A–E behind one interface: `open_source` returns a VolumeSource.

All serve the compact arrays (smallest lossless image dtype, uint8 label):
  A  every rank loads every crop into its own RAM                 (RAM = N copies)
  B  one read-only store per node (/dev/shm or a local disk),     (RAM = 1 copy, shared)
     memory-mapped by every rank and DataLoader worker
  C  the same store on disk, mapped per access                    (RAM = the crop in use)
  D  crops up to a size threshold as in A, larger ones as in C
  E  fork copy-on-write from a parent that cached before spawning: not available, because
     torchrun starts every rank as a fresh interpreter (nothing a parent holds is inherited);
     the probe measures this and the selector always rejects E with that figure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cellmapseg.config import CachingConfig
from cellmapseg.data.loading import load_volume
from cellmapseg.data.store import (
    StoreSource,
    check_space,
    ensure_store,
    is_complete,
    store_bytes,
    store_path,
)
from cellmapseg.data.volumes import ListSource, Volume, VolumeSource
from cellmapseg.errors import InputError

STRATEGIES = ("A", "B", "C", "D", "E")
E_REASON = (
    "torchrun starts each rank as a new interpreter, so a parent's cache is never inherited "
    "copy-on-write; every rank would hold its own copy, exactly as in A"
)


class MixedSource:
    """Strategy D: some volumes held in RAM, the rest served by a store."""

    def __init__(self, order: Sequence[tuple[str, int]], ram: list[Volume],
                 disk: StoreSource | None) -> None:
        self._order, self._ram, self._disk = list(order), ram, disk

    def __len__(self) -> int:
        return len(self._order)

    def get(self, index: int) -> Volume:
        kind, i = self._order[index]
        return self._ram[i] if kind == "ram" else self._disk.get(i)  # type: ignore[union-attr]


def from_selection(cfg: CachingConfig, selection: Mapping[str, Any]) -> CachingConfig:
    """The caching settings the selection stage decided on (it alone decides the strategy)."""
    return dataclasses.replace(
        cfg, strategy=selection["strategy"], store_dir=selection["store_dir"],
        disk_dir=selection["disk_dir"], d_threshold_mb=selection["d_threshold_mb"],
    )


def _rows(frame: pd.DataFrame) -> list[Mapping[str, Any]]:
    return frame.to_dict("records")


def open_source(strategy: str, crops: pd.DataFrame, cfg: CachingConfig,
                store_rows: pd.DataFrame | None = None) -> VolumeSource:
    """A VolumeSource over the inventory rows `crops` under `strategy`.

    `store_rows` are the crops a shared store holds (default: `crops`); pass the whole
    inventory so that the training and validation sources share one store.
    """
    rows = _rows(crops)
    names = [r["crop"] for r in rows]
    everything = _rows(store_rows if store_rows is not None else crops)
    if strategy == "A":
        return ListSource([load_volume(r) for r in rows])
    if strategy in ("B", "C"):
        root = cfg.store_dir if strategy == "B" else cfg.disk_dir
        info = ensure_store(root, everything)
        return StoreSource(info.path, names, persistent=strategy == "B")
    if strategy == "D":
        return _mixed(rows, everything, cfg)
    if strategy == "E":
        raise InputError(f"caching: strategy E is not available: {E_REASON}")
    raise InputError(f"caching: unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")


def _store_plan(strategy: str, crops: pd.DataFrame, cfg: CachingConfig
                ) -> tuple[str, list[Mapping[str, Any]]] | None:
    """The folder and the crops of the store `strategy` uses, or None (no store)."""
    rows = _rows(crops)
    if strategy in ("B", "C"):
        return (cfg.store_dir if strategy == "B" else cfg.disk_dir), rows
    if strategy == "D":
        large = [r for r in rows if not is_small(r, cfg)]
        return (cfg.disk_dir, large) if large else None
    return None


def check_store_space(strategy: str, crops: pd.DataFrame, cfg: CachingConfig) -> None:
    """Before any rank starts: the store `strategy` builds from `crops` fits its folder (a
    complete store from an earlier run needs no space)."""
    plan = _store_plan(strategy, crops, cfg)
    if plan is None or not plan[1] or is_complete(store_path(*plan)):
        return
    Path(plan[0]).mkdir(parents=True, exist_ok=True)
    check_space(Path(plan[0]), store_bytes(plan[1]))


def build_store(strategy: str, crops: pd.DataFrame, cfg: CachingConfig, workers: int) -> None:
    """Build (or reuse) the store `strategy` uses, `workers` crops at a time, before the ranks
    start: they then find it complete, and no rank builds while the others wait."""
    plan = _store_plan(strategy, crops, cfg)
    if plan is not None and plan[1]:
        ensure_store(plan[0], plan[1], workers=workers)


def is_small(row: Mapping[str, Any], cfg: CachingConfig) -> bool:
    return int(row["compact_bytes"]) <= cfg.d_threshold_mb * 2**20


def _mixed(rows: list[Mapping[str, Any]], everything: list[Mapping[str, Any]],
           cfg: CachingConfig) -> MixedSource:
    large_all = [r for r in everything if not is_small(r, cfg)]
    disk = None
    if any(not is_small(r, cfg) for r in rows):
        info = ensure_store(cfg.disk_dir, large_all)
        disk = StoreSource(info.path, [r["crop"] for r in large_all], persistent=False)
    large_index = {r["crop"]: i for i, r in enumerate(large_all)}
    ram: list[Volume] = []
    order: list[tuple[str, int]] = []
    for r in rows:
        if is_small(r, cfg):
            order.append(("ram", len(ram)))
            ram.append(load_volume(r))
        else:
            order.append(("disk", large_index[r["crop"]]))
    return MixedSource(order, ram, disk)


def stored_volume(strategy: str, crops: pd.DataFrame, cfg: CachingConfig,
                  crop: str) -> Volume | None:
    """The crop as the training store `strategy` built from `crops` holds it, if that store is
    complete on this node (the predict job may run elsewhere than training did), else None."""
    plan = _store_plan(strategy, crops, cfg)
    if plan is None or crop not in {str(r["crop"]) for r in plan[1]}:
        return None
    path = store_path(*plan)
    if not is_complete(path):
        return None
    return StoreSource(path, [crop], persistent=False).get(0)
