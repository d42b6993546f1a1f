"""Caching-strategy selection → results/probe/caching_strategy.json (what training reads).

Estimates each strategy's RAM per rank and per node for the whole dataset from the probe's
measured bytes per voxel, for every training job at its own ranks per node, checks it against
that job's budget (its memory x ram_fraction - rank_allowance x its ranks per node, plus the
folder space a store needs) and picks one strategy for all models: `auto` prefers B, then D,
then C; a forced strategy that cannot fit stops here, before any GPU work, with the estimate
that rules it out.

Jobs side by side on one node: Slurm places a job only where its --mem fits, so each job's
memory (its allocation.mem_gb, at most the node's RAM) is its budget, and the node's memory is
divided among the concurrent jobs by those settings. B's store is one per node, shared by
every job there (it is named by the crops, not the model), and is charged to the job that
builds it: every job's budget must hold it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cellmapseg.atomic import write_json
from cellmapseg.config import Config
from cellmapseg.data.caching import E_REASON
from cellmapseg.errors import InputError

PREFERENCE = ("B", "D", "C")
VERSION = 1
GiB = 2**30


def _fmt(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def estimates(memory: dict[str, Any], world: int) -> dict[str, dict[str, Any]]:
    """RAM per rank and per node for each strategy (bytes), from the measured bytes/voxel."""
    data, meas = memory["data"], memory["measurements"]
    voxels, probe_vox = data["voxels"], memory["probe_voxels"]
    out: dict[str, dict[str, Any]] = {}

    def scaled(s: str, vox: int) -> tuple[float, float]:
        m = meas[s]
        private = m["private_bytes_per_voxel_per_rank"] * vox
        shared = m["shared_bytes_per_voxel"] * vox
        return private + shared / world, world * private + shared

    def residual(s: str) -> float:  # what stays in a rank after per-access reads (not scaled)
        return max(meas[s]["private_bytes_per_voxel_per_rank"] * probe_vox, 0.0)

    if "A" in meas:
        rank, node = scaled("A", voxels)
        out["A"] = {"per_rank_bytes": rank, "per_node_bytes": node,
                    "model": "private bytes/voxel x all voxels, in every rank"}
    if "B" in meas:
        rank, node = scaled("B", voxels)
        out["B"] = {"per_rank_bytes": rank, "per_node_bytes": node,
                    "store_bytes": data["store_bytes"], "folder": "store_dir",
                    "model": "shared bytes/voxel x all voxels once per node + private per rank"}
    if "C" in meas:
        rank = residual("C") + data["largest_crop_bytes"]
        out["C"] = {"per_rank_bytes": rank, "per_node_bytes": world * rank,
                    "store_bytes": data["store_bytes"], "folder": "disk_dir",
                    "model": "largest crop read whole (validation) + measured residual, per rank"}
    if "A" in meas and "C" in meas:
        # Composed from A (small crops) and C (large ones): the probe crops are rarely large,
        # so D's own probe figure (kept in memory.json) mostly repeats A's.
        rank = (meas["A"]["private_bytes_per_voxel_per_rank"] * data["small_voxels"]
                + residual("C") + data["largest_large_crop_bytes"])
        out["D"] = {"per_rank_bytes": rank, "per_node_bytes": world * rank,
                    "store_bytes": data["large_store_bytes"], "folder": "disk_dir",
                    "model": "A's bytes/voxel x small-crop voxels + largest large crop, per rank"}
    if "A" in out:
        out["E"] = {**out["A"], "model": "as A (measured): ranks inherit nothing under torchrun"}
    spec = memory.get("spec_cache")
    if spec:
        rank = spec["cached_bytes_per_voxel"] * voxels
        out["spec"] = {"per_rank_bytes": rank, "per_node_bytes": world * rank,
                       "model": "spec's CacheDataset: measured bytes/voxel x all voxels per rank"}
    return out


def _fits(name: str, est: dict[str, Any], budget: float, memory: dict[str, Any],
          cfg: Config) -> tuple[bool, str]:
    if name == "E":
        return False, f"rejected: {E_REASON} (A measured: {_fmt(est['per_node_bytes'])} per node)"
    if name == "spec":
        return False, "reference only: the spec's design, not selectable"
    if est["per_node_bytes"] > budget:
        return False, f"needs {_fmt(est['per_node_bytes'])} per node > budget {_fmt(budget)}"
    folder_key = est.get("folder")
    if folder_key:
        folder = memory["host"][folder_key]
        if est["store_bytes"] > folder["free_bytes"]:
            path = getattr(cfg.caching, folder_key)
            return False, (f"store needs {_fmt(est['store_bytes'])} but {path} has "
                           f"{_fmt(folder['free_bytes'])} free")
    return True, f"fits: {_fmt(est['per_node_bytes'])} per node <= budget {_fmt(budget)}"


def jobs(memory: dict[str, Any], cfg: Config) -> dict[str, dict[str, Any]]:
    """Every training job's ranks per node, memory and budget (bytes). A job's memory is its
    --mem (allocation.mem_gb), at most the node's RAM as the probe saw it: Slurm reserves it
    for the job whatever runs beside it, so jobs side by side divide the node between them by
    their settings. With no models configured: one job with what the probe's job had, at the
    probe's planned world size."""
    allowance = cfg.caching.rank_allowance_gb * GiB
    host = memory["host"]
    if not cfg.models:
        return {"train": _job(memory["world_size"], 1, host["job_available_bytes"],
                              "the probe's job", allowance, cfg)}
    node = host.get("ram_total_bytes") or float("inf")
    out: dict[str, dict[str, Any]] = {}
    for name in cfg.models:
        a = cfg.allocation(name)
        mem = min(a.mem_gb * GiB, node)
        source = (f"{name}'s allocation.mem_gb" if mem < node else
                  "the node's RAM (less than allocation.mem_gb)")
        out[name] = _job(cfg.ranks_per_node(name), a.nodes, mem, source, allowance, cfg)
    return out


def _job(ranks: int, nodes: int, mem: float, source: str, allowance: float,
         cfg: Config) -> dict[str, Any]:
    return {"ranks_per_node": ranks, "nodes": nodes, "memory_bytes": mem, "memory_from": source,
            "budget_bytes": mem * cfg.caching.ram_fraction - allowance * ranks}


def _fits_every_job(name: str, per_job: dict[str, dict[str, Any]], budgets: dict[str, Any],
                    memory: dict[str, Any], cfg: Config) -> tuple[bool, str]:
    """Whether strategy `name` fits every job; the why of the tightest job (the first that
    fails, else the one with the least room)."""
    results = {j: _fits(name, per_job[j][name], budgets[j]["budget_bytes"], memory, cfg)
               for j in per_job}
    failed = [j for j, (ok, _) in results.items() if not ok]
    if failed:
        return False, _for_job(failed[0], results[failed[0]][1], len(per_job))
    tight = min(per_job, key=lambda j: budgets[j]["budget_bytes"]
                - per_job[j][name]["per_node_bytes"])
    return True, _for_job(tight, results[tight][1], len(per_job))


def _for_job(job: str, why: str, n: int) -> str:
    return why if n == 1 else f"{job}'s job {why}"


def select(memory: dict[str, Any], cfg: Config) -> dict[str, Any]:
    budgets = jobs(memory, cfg)
    world = max(j["ranks_per_node"] for j in budgets.values())
    tightest = min(budgets, key=lambda j: budgets[j]["budget_bytes"])
    available = budgets[tightest]["memory_bytes"]
    allowance = cfg.caching.rank_allowance_gb * GiB
    budget = budgets[tightest]["budget_bytes"]
    table = estimates(memory, world)
    per_job = {j: estimates(memory, b["ranks_per_node"]) for j, b in budgets.items()}
    for name in ("A", "B", "C", "D", "E"):
        if name not in table:
            why = memory.get("skipped", {}).get(name, "not measured by the probe")
            table[name] = {"per_rank_bytes": None, "per_node_bytes": None, "feasible": False,
                           "why": f"not measured: {why}"}
    for name, est in table.items():
        if "feasible" in est:
            continue
        if name in ("E", "spec"):
            est["feasible"], est["why"] = _fits(name, est, budget, memory, cfg)
        else:
            est["feasible"], est["why"] = _fits_every_job(name, per_job, budgets, memory, cfg)
    for j, b in budgets.items():
        b["per_node_bytes"] = {k: v["per_node_bytes"] for k, v in per_job[j].items()
                               if k in ("A", "B", "C", "D")}
    requested = cfg.caching.strategy
    chosen = _choose(requested, table, budget)
    return {
        "version": VERSION,
        "strategy": chosen,
        "requested": requested,
        "reason": _reason(chosen, requested, table, memory, cfg, budgets),
        "world_size": world,
        "available_bytes": available,
        "ram_fraction": cfg.caching.ram_fraction,
        "rank_allowance_bytes": allowance,
        "budget_bytes": budget,
        "jobs": budgets,
        "store_dir": cfg.caching.store_dir,
        "disk_dir": cfg.caching.disk_dir,
        "d_threshold_mb": cfg.caching.d_threshold_mb,
        "estimates": {k: table[k] for k in ("A", "B", "C", "D", "E", "spec") if k in table},
    }


def _choose(requested: str, table: dict[str, dict[str, Any]], budget: float) -> str:
    if requested != "auto":
        est = table[requested]
        if not est["feasible"]:
            raise InputError(f"caching: strategy {requested} (forced by caching.strategy) cannot "
                             f"be used: {est['why']}")
        return requested
    for name in PREFERENCE:
        if table[name]["feasible"]:
            return name
    lines = "; ".join(f"{k}: {table[k]['why']}" for k in ("A", "B", "C", "D", "E"))
    raise InputError(f"caching: no strategy fits the RAM budget of {_fmt(budget)} ({lines})")


def _reason(chosen: str, requested: str, table: dict[str, dict[str, Any]],
            memory: dict[str, Any], cfg: Config, budgets: dict[str, dict[str, Any]]) -> str:
    data = memory["data"]
    world = max(j["ranks_per_node"] for j in budgets.values())
    est = table[chosen]
    how = {
        "A": "every rank holds its own copy of all crops",
        "B": f"one read-only store of all {data['crops']} crops in {cfg.caching.store_dir}, "
             f"memory-mapped by all {world} ranks and their loader workers",
        "C": f"the compact store on disk in {cfg.caching.disk_dir}, read per access",
        "D": f"{data['small_crops']} crops up to {cfg.caching.d_threshold_mb:g} MiB in each "
             f"rank's RAM, {data['large_crops']} larger ones read per access from "
             f"{cfg.caching.disk_dir}",
    }[chosen]
    why = "forced by caching.strategy" if requested != "auto" else _auto_why(chosen, table)
    parts = [
        f"Strategy {chosen} ({why}): {how}.",
        f"Estimated {_fmt(est['per_node_bytes'])} per node ({_fmt(est['per_rank_bytes'])} per "
        f"rank) for {data['voxels']:,} voxels at {world} rank(s) per node, from "
        f"{memory['probe_ranks']} probe ranks x {len(memory['probe_crops'])} crops.",
        *(_budget_line(name, b, cfg, len(budgets)) for name, b in budgets.items()),
    ]
    if table["A"].get("per_node_bytes") is not None and chosen != "A":
        parts.append(f"A would need {_fmt(table['A']['per_node_bytes'])}.")
    if "spec" in table:
        parts.append(f"The spec's CacheDataset would hold "
                     f"{memory['spec_cache']['cached_bytes_per_voxel']:.1f} bytes/voxel per rank: "
                     f"{_fmt(table['spec']['per_node_bytes'])} per node.")
    return " ".join(parts)


def _budget_line(name: str, job: dict[str, Any], cfg: Config, n: int) -> str:
    whose = "Budget" if n == 1 else f"{name}'s budget"
    return (f"{whose} {_fmt(job['budget_bytes'])} = {cfg.caching.ram_fraction:g} x "
            f"{_fmt(job['memory_bytes'])} ({job['memory_from']}) - {job['ranks_per_node']} x "
            f"{cfg.caching.rank_allowance_gb:g} GiB per rank.")


def _auto_why(chosen: str, table: dict[str, dict[str, Any]]) -> str:
    passed = [n for n in PREFERENCE[: PREFERENCE.index(chosen)]]
    if not passed:
        return "auto: the preferred strategy fits"
    return "auto: " + "; ".join(f"{n} ruled out, {table[n]['why']}" for n in passed)


def write_selection(cfg: Config, memory_json: str | Path, out_json: str | Path) -> dict[str, Any]:
    memory = json.loads(Path(memory_json).read_text())
    result = select(memory, cfg)
    write_json(out_json, result)
    return result


def read_selection(path: str | Path) -> dict[str, Any]:
    """The strategy training must use (nothing else decides it)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"caching: {path} not found (run the select_caching rule)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"caching: {path} is not valid JSON ({exc.msg}, line {exc.lineno}): "
                         "rerun the select_caching rule") from None
