"""The memory probe and caching decision pages of the report."""

from __future__ import annotations

from cellmapseg.report.probe import caching_html, memory_html

GIB = 2**30


def selection() -> dict:
    est = {"per_rank_bytes": 3 * GIB, "per_node_bytes": 21 * GIB, "model": "m", "feasible": True,
           "why": "fits: 21 GiB <= budget 600 GiB"}
    return {"strategy": "B", "requested": "auto", "reason": "Strategy B <fits> & is preferred",
            "world_size": 7, "available_bytes": 900 * GIB, "ram_fraction": 0.7,
            "rank_allowance_bytes": 2 * GIB, "budget_bytes": 616 * GIB, "store_dir": "/dev/shm",
            "disk_dir": "results/cache",
            "estimates": {"A": {**est, "per_node_bytes": 800 * GIB, "feasible": False,
                                "why": "over budget"}, "B": est}}


def memory() -> dict:
    m = {"private_bytes_per_voxel_per_rank": 2.0, "shared_bytes_per_voxel": 0.1,
         "node_pss_bytes_per_voxel": 2.1}
    return {"host": {"hostname": "node-1", "ram_total_bytes": 1000 * GIB,
                     "ram_available_bytes": 900 * GIB, "cgroup": {"limit_bytes": None},
                     "job_available_bytes": 900 * GIB,
                     "store_dir": {"path": "/dev/shm", "free_bytes": 400 * GIB, "tmpfs": True},
                     "cpus_usable": 63, "gpus": {"torch_device_count": 7}},
            "world_size": 7, "probe_ranks": 2, "probe_crops": ["a", "b"], "probe_voxels": 10**6,
            "data": {"crops": 277, "voxels": 3 * 10**10}, "measurements": {"A": m, "B": m},
            "spec_cache": {"cached_bytes_per_voxel": 60.0}, "skipped": {}}


def test_caching_page_names_the_choice_every_estimate_and_escapes_text():
    page = caching_html(selection())
    assert "<h2>Caching strategy B</h2>" in page
    assert "Strategy B &lt;fits&gt; &amp; is preferred" in page and "<fits>" not in page
    assert "<td>A</td><td>not feasible</td><td>3.00 GiB</td><td>800.00 GiB</td>" in page
    assert "<td>B</td><td>chosen</td>" in page


def test_memory_page_lists_host_facts_and_costs_per_voxel():
    page = memory_html(memory())
    assert "<td>available to the job</td><td>900.00 GiB</td>" in page
    assert "<td>cgroup limit</td><td>n/a</td>" in page
    assert "<td>A</td><td>2.000</td><td>0.100</td><td>2.100</td>" in page
    assert "spec&#x27;s CacheDataset (one crop)</td><td>60.0" in page


def test_caching_page_shows_each_training_job_budget():
    job = {"nodes": 1, "ranks_per_node": 2, "memory_bytes": 300 * GIB,
           "memory_from": "allocation.mem_gb of <a>'s job", "budget_bytes": 178 * GIB,
           "per_node_bytes": {"A": 156 * GIB, "B": 75 * GIB}}
    page = caching_html({**selection(), "jobs": {"a": job, "b": job}})
    assert "<td>a</td><td>1</td><td>2</td><td>300.00 GiB</td>" in page
    assert "of &lt;a&gt;&#x27;s job" in page and "A 156.00 GiB, B 75.00 GiB" in page
