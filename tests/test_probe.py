"""Memory probe and strategy selection: measured sharing, extrapolation, and the decisions."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from conftest import ONTOLOGY

from cellmapseg.config import from_dict
from cellmapseg.data.inventory import read_inventory
from cellmapseg.data.store import store_bytes
from cellmapseg.errors import InputError
from cellmapseg.probe import memory as probe
from cellmapseg.probe.select import estimates, select

GiB = 2**30


def caching_dict(tmp_path) -> dict:
    return dataclasses.asdict(from_dict({"caching": {"store_dir": str(tmp_path / "shm"),
                                                     "disk_dir": str(tmp_path / "disk")}}).caching)


def run(strategy, rows, nproc, tmp_path):
    caching = caching_dict(tmp_path)
    assert probe.prepare(strategy, rows, caching) is None
    return probe.measure(strategy, rows, caching, nproc, [32, 32, 32], 2, tmp_path,
                         ONTOLOGY.labels)


@pytest.fixture(scope="module")
def inventory(synthetic_inventory):
    return read_inventory(synthetic_inventory)


@pytest.mark.slow
def test_four_ranks_share_one_b_store_while_a_copies_per_rank(inventory, tmp_path):
    rows = inventory[inventory.split == "training"]
    one_copy = store_bytes(rows.to_dict("records"))
    b4 = run("B", rows, 4, tmp_path)
    a4 = run("A", rows, 4, tmp_path)
    a1 = run("A", rows, 1, tmp_path)
    # B: the summed PSS of 4 ranks is one copy of the store; summed RSS counts it 4 times
    assert b4["total_pss_delta"] <= 1.1 * one_copy
    assert b4["total_rss_delta"] >= 3.5 * one_copy
    assert all(r["delta"]["pss_anon"] < 0.05 * one_copy for r in b4["ranks"])
    # A: every rank holds its own copy, so the node total grows about N x
    ratio = a4["total_pss_delta"] / a1["total_pss_delta"]
    assert 3.5 <= ratio <= 4.5, ratio
    assert a4["total_pss_delta"] >= 3.5 * b4["total_pss_delta"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["A", "B"])
def test_extrapolation_from_few_crops_predicts_a_larger_measurement(strategy, inventory, tmp_path):
    cfg = from_dict({"caching": caching_dict(tmp_path)})
    small, large = inventory.head(3), inventory.head(10)
    measured_small = run(strategy, small, 2, tmp_path / "s")
    memory = {"probe_voxels": int(small["voxels"].sum()), "world_size": 2,
              "data": probe.data_totals(large, cfg),
              "measurements": {strategy: measured_small}}
    predicted = estimates(memory, world=2)[strategy]["per_node_bytes"]
    actual = run(strategy, large, 2, tmp_path / "l")["total_pss_delta"]
    assert abs(predicted - actual) <= 0.25 * actual, (predicted, actual)


# --- selection, on a hand-made probe result ------------------------------------------------

VOX = 40 * 10**9  # the real dataset: ~206 GB as float32 image + uint8 label = ~41 G voxels


def memory_result(shm_free=2**40, disk_free=2**42, available=920 * GiB, world=7) -> dict:
    per = {"A": (2.1, 0.0), "B": (0.0, 2.0), "C": (0.0, 0.01), "D": (2.1, 0.0)}
    return {
        "world_size": world, "probe_ranks": world, "probe_crops": ["c"] * 10,
        "probe_voxels": 10**9,
        "host": {"job_available_bytes": available, "store_dir": {"free_bytes": shm_free},
                 "disk_dir": {"free_bytes": disk_free}},
        "data": {"crops": 277, "voxels": VOX, "store_bytes": 2 * VOX,
                 "largest_crop_bytes": 16 * 10**9, "small_crops": 232,
                 "small_voxels": 30 * 10**9, "large_crops": 45, "large_store_bytes": 20 * 10**9,
                 "largest_large_crop_bytes": 16 * 10**9},
        "measurements": {s: {"private_bytes_per_voxel_per_rank": p, "shared_bytes_per_voxel": sh}
                         for s, (p, sh) in per.items()},
        "spec_cache": {"cached_bytes_per_voxel": 60.0},
    }


def cfg(**caching):
    return from_dict({"caching": caching})


def test_auto_prefers_b_when_it_fits():
    out = select(memory_result(), cfg())
    assert out["strategy"] == "B"
    assert out["estimates"]["B"]["per_node_bytes"] == pytest.approx(2 * VOX)
    assert out["estimates"]["A"]["per_node_bytes"] == pytest.approx(7 * 2.1 * VOX)
    assert set(out["estimates"]) == {"A", "B", "C", "D", "E", "spec"}
    assert "Strategy B" in out["reason"] and "budget" in out["reason"].lower()


def test_a_full_dev_shm_makes_auto_pick_d_or_c_and_say_why():
    out = select(memory_result(shm_free=10 * GiB), cfg())
    assert out["strategy"] in ("C", "D")
    assert not out["estimates"]["B"]["feasible"]
    assert "B ruled out" in out["reason"] and "/dev/shm has 10.00 GiB free" in out["reason"]


def test_d_is_skipped_for_c_when_its_ram_part_does_not_fit():
    out = select(memory_result(shm_free=10 * GiB, available=600 * GiB), cfg())
    assert out["strategy"] == "C"
    assert "D ruled out" in out["reason"]


def test_a_budget_too_small_for_every_strategy_stops_with_a_clear_error():
    with pytest.raises(InputError, match="no strategy fits the RAM budget"):
        select(memory_result(available=100 * GiB), cfg(rank_allowance_gb=16))


def test_a_forced_strategy_that_cannot_fit_fails_with_its_estimate():
    with pytest.raises(InputError, match=r"strategy A .*cannot be used: needs .* > budget"):
        select(memory_result(available=800 * GiB), cfg(strategy="A"))


def test_forced_e_is_always_rejected_with_the_measured_reason():
    with pytest.raises(InputError, match=r"strategy E .*new interpreter.*A measured"):
        select(memory_result(), cfg(strategy="E"))


def test_a_forced_strategy_that_fits_is_used():
    out = select(memory_result(), cfg(strategy="C"))
    assert out["strategy"] == "C" and "forced" in out["reason"]


def test_unmeasured_strategies_appear_as_infeasible_in_the_table():
    mem = memory_result()
    del mem["measurements"]["B"]
    mem["skipped"] = {"B": "/dev/shm has 1 MiB free"}
    out = select(copy.deepcopy(mem), cfg())
    assert out["estimates"]["B"]["feasible"] is False
    assert "1 MiB free" in out["estimates"]["B"]["why"]
    assert out["strategy"] == "D"


def test_spec_design_estimate_is_60_bytes_per_voxel_per_rank():
    est = estimates(memory_result(), world=7)["spec"]
    assert est["per_node_bytes"] == pytest.approx(7 * 60 * VOX)


# --- jobs side by side: each within its own allocation ------------------------------------------

def side_by_side(mem_gb: dict[str, float], **caching):
    net = {"type": "swinunetr"}
    return from_dict({"caching": {"rank_allowance_gb": 16, **caching},
                      "train": {"gpus": 7, "allocation": {"gpus": 2, "cpus": 21}},
                      "models": {m: {"network": net, "allocation": {"mem_gb": gb}}
                                 for m, gb in mem_gb.items()}})


def test_each_job_is_budgeted_its_own_memory_at_its_own_ranks_per_node():
    out = select(memory_result(world=2), side_by_side({"a": 300, "b": 300, "c": 300}))
    assert out["strategy"] == "B"
    for job in out["jobs"].values():
        assert job["ranks_per_node"] == 2 and job["memory_bytes"] == 300 * GiB
        assert job["budget_bytes"] == pytest.approx(0.7 * 300 * GiB - 2 * 16 * GiB)
        assert job["per_node_bytes"]["A"] == pytest.approx(2 * 2.1 * VOX)  # 2 ranks, not 7
    assert "a's budget" in out["reason"] and "c's budget" in out["reason"]


def test_the_tightest_job_decides_and_is_named():
    out = select(memory_result(world=2), side_by_side({"a": 300, "b": 100}))
    assert out["strategy"] == "C"
    assert out["estimates"]["B"]["why"].startswith("b's job needs")
    assert out["budget_bytes"] == pytest.approx(0.7 * 100 * GiB - 2 * 16 * GiB)


def test_a_job_memory_is_capped_by_the_node_it_runs_on():
    mem = memory_result(world=2)
    mem["host"]["ram_total_bytes"] = 256 * GiB
    out = select(mem, side_by_side({"a": 300}))
    assert out["jobs"]["a"]["memory_bytes"] == 256 * GiB
    assert out["jobs"]["a"]["memory_from"] == "the node's RAM (less than allocation.mem_gb)"
