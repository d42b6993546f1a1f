"""The memory probe and the caching decision as HTML pages for the report (every value escaped)."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from cellmapseg.report.comparison import STYLE

GIB = 2**30


def _gib(v: Any) -> str:  # JSON scalar
    if v is None:
        return "n/a"
    return f"{v / GIB:.2f} GiB" if v >= GIB else f"{v / 2**20:.1f} MiB"


def _table(head: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, body: str) -> str:
    name = html.escape(title)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{name}</title>"
            f"<style>{STYLE} td{{text-align:left}}</style></head><body><h2>{name}</h2>\n"
            f"{body}\n</body></html>\n")


def caching_html(selection: dict[str, Any]) -> str:
    """The decision: chosen strategy, why, and every strategy's estimate against the budget."""
    rows = [(name, "chosen" if name == selection["strategy"] else
             ("feasible" if e["feasible"] else "not feasible"),
             _gib(e["per_rank_bytes"]), _gib(e["per_node_bytes"]), e["model"], e["why"])
            for name, e in selection["estimates"].items()]
    facts = [("strategy", selection["strategy"]), ("requested", selection["requested"]),
             ("world size", selection["world_size"]),
             ("available memory", _gib(selection["available_bytes"])),
             ("budget", f"{_gib(selection['budget_bytes'])} = {selection['ram_fraction']} x "
                        f"available - world size x {_gib(selection['rank_allowance_bytes'])}"),
             ("shared store folder", selection["store_dir"]),
             ("disk cache folder", selection["disk_dir"])]
    return _page(f"Caching strategy {selection['strategy']}",
                 f"<p>{html.escape(selection['reason'])}</p>"
                 + _table(("decision", "value"), facts) + "<h3>Estimates</h3>"
                 + _table(("strategy", "status", "per rank", "per node", "model", "why"), rows)
                 + _jobs(selection.get("jobs") or {}))


def _jobs(jobs: dict[str, Any]) -> str:
    """Each training job's budget and the chosen strategy's cost on one of its nodes."""
    if not jobs:
        return ""
    rows = [(name, j["nodes"], j["ranks_per_node"], _gib(j["memory_bytes"]), j["memory_from"],
             _gib(j["budget_bytes"]),
             ", ".join(f"{k} {_gib(v)}" for k, v in j["per_node_bytes"].items()))
            for name, j in jobs.items()]
    return ("<h3>Training jobs (each within its own memory)</h3>"
            + _table(("job", "nodes", "ranks per node", "memory", "from", "budget",
                      "per node by strategy"), rows))


def memory_html(memory: dict[str, Any]) -> str:
    """The probe: host facts and the measured bytes per voxel of each strategy."""
    host, data = memory["host"], memory["data"]
    facts = [("host", host["hostname"]), ("RAM total", _gib(host["ram_total_bytes"])),
             ("RAM available", _gib(host["ram_available_bytes"])),
             ("cgroup limit", _gib(host["cgroup"]["limit_bytes"])),
             ("available to the job", _gib(host["job_available_bytes"])),
             ("store folder", f"{host['store_dir']['path']} (free "
                              f"{_gib(host['store_dir']['free_bytes'])}, tmpfs "
                              f"{host['store_dir']['tmpfs']})"),
             ("usable CPUs", host["cpus_usable"]),
             ("GPUs", host["gpus"]["torch_device_count"]),
             ("world size", memory["world_size"]), ("probe ranks", memory["probe_ranks"]),
             ("probe crops / voxels", f"{len(memory['probe_crops'])} / "
                                      f"{memory['probe_voxels']:,}"),
             ("dataset crops / voxels", f"{data['crops']} / {data['voxels']:,}")]
    rows = [(name, f"{m['private_bytes_per_voxel_per_rank']:.3f}",
             f"{m['shared_bytes_per_voxel']:.3f}", f"{m['node_pss_bytes_per_voxel']:.3f}")
            for name, m in memory["measurements"].items()]
    spec = memory.get("spec_cache")
    if spec:
        rows.append(("spec's CacheDataset (one crop)", f"{spec['cached_bytes_per_voxel']:.1f}",
                     "0", f"{spec['cached_bytes_per_voxel']:.1f}"))
    skipped = memory.get("skipped") or {}
    notes = "".join(f"<p>{html.escape(f'{k}: {v}')}</p>" for k, v in skipped.items())
    return _page("Memory probe",
                 _table(("fact", "value"), facts) + "<h3>Measured cost per voxel (bytes)</h3>"
                 + _table(("strategy", "private per rank", "shared per node",
                           "node PSS at this world size"), rows) + notes)
