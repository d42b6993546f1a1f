"""A crop of 132 M voxels (384 x 384 x 896) through validation, prediction and scoring, each
stage in a process of its own under a hard memory limit of 3 GiB (a memory cgroup as root,
else an address-space limit), by benchmarks/scale.py. Before memory was bounded by a block,
validation held ~300 bytes per voxel (~37 GiB here) and scoring whole int32/int64 volumes.

The crop's nuclei (and any instance group it annotates: mito, ves, endo) are found exactly by the
per-voxel network, so scoring must give them F1 = 1, and validation's tp/fp/fn per atomic class
must equal the scoring of the same prediction (groups have no channel of their own).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import ONTOLOGY

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"
LIMIT = 3 * 2**30
VOXELS = 128 * 2**20


def load_benchmark():  # a module
    spec = importlib.util.spec_from_file_location("scale", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_128m_voxel_crop_is_validated_predicted_and_scored_within_3_gib(tmp_path):
    scale = load_benchmark()
    # overlap 0: the same blocks and memory, a quarter of the windows (CI time)
    run = scale.run_size(VOXELS, tmp_path, limit=LIMIT, timeout=1500, overlap=0.0)
    assert run["crop"]["voxels"] >= 128_000_000
    # the black border (benchmarks/scale.py: PAD planes on two faces) found by the streamed
    # scan and counted in slabs, then left out of validation and scoring
    inv = pd.read_csv(tmp_path / "inventory.csv").set_index("crop")
    d, h, w = run["crop"]["shape"]
    black = scale.PAD * d * h + scale.PAD * h * (w - scale.PAD)
    assert black <= inv.loc["jrc_scale-1_crop2", "padding_voxels"] <= 1.001 * black
    for stage in ("inventory", "validation", "prediction", "scoring"):
        r = run["stages"][stage]
        print(f"{stage}: {r['seconds']:.0f} s, VmHWM {r['vm_hwm_bytes'] / 2**30:.2f} GiB, "
              f"private {r['peak_private_bytes'] / 2**30:.2f} GiB ({r['limit']})")
        assert r["vm_hwm_bytes"] < LIMIT, stage
    table = pd.read_csv(tmp_path / "eval.csv")
    nuc = table[table["class"] == "nuc"].iloc[0]
    assert nuc["n_true"] > 10 and nuc["f1"] == 1.0 and nuc["fp"] == nuc["fn"] == 0
    counts = json.loads((tmp_path / "validation_counts.json").read_text())
    for _, row in table[table["kind"] == "instance"].iterrows():
        assert row["f1"] == 1.0 and row["fp"] == row["fn"] == 0, row["class"]
    semantic = table[(table["kind"] == "semantic") & table["class"].isin(ONTOLOGY.atomic)]
    assert len(semantic) >= 3
    assert (semantic["fp"] > 0).any() and (semantic["fn"] > 0).any()  # something to agree on
    for _, row in semantic.iterrows():
        assert counts[ONTOLOGY.channel(row["class"])] == [row["tp"], row["fp"], row["fn"]]
