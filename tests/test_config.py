"""Typed configuration: schema defaults, clear errors, the three spec model configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cellmapseg import config
from cellmapseg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "config" / "config.yaml"
CLUSTER = ROOT / "config" / "cluster.yaml"
SPEC_WEIGHTS = (1, 1, 1, 1, 4, 8, 8, 1, 1, 1, 1, 1, 1, 2)


def _model(**extra):
    return {"network": {"type": "segresnet"}, "ds_weights": [1.0], **extra}


def test_empty_config_gets_every_default_from_the_schema():
    cfg = config.from_dict({})
    assert cfg.seed == 42
    assert cfg.data.spacing_nm == (8.0, 8.0, 8.0)
    assert cfg.data.synthetic.enabled is True
    assert cfg.models == {}


def test_model_defaults_are_the_spec_common_config():
    m = config.from_dict({"models": {"x": _model()}}).models["x"]
    assert (m.lr, m.optimizer, m.weight_decay, m.warmup) == (1e-3, "AdamW", 1e-5, 0.05)
    assert (m.batch_size, m.num_samples, m.roi_size, m.clip_grad) == (2, 4, (128, 128, 128), 1.0)
    assert (m.mixup_p, m.mixup_beta, m.bf16, m.train_sub_epochs) == (0.5, 1.0, True, 10)
    assert m.network.args == {
        "init_filters": 32, "blocks_down": [1, 2, 2, 4, 4], "norm": "INSTANCE",
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"sed": 1}, "config: unknown key 'sed'"),
        ({"models": {"m": _model(lrr=1)}}, "config: unknown key 'models.m.lrr'"),
        (
            {"models": {"m": {"network": {"type": "segresnet", "widht": 3}, "ds_weights": [1]}}},
            "config: unknown key 'models.m.network.widht'",
        ),
        ({"data": {"synthetic": {"n_vall": 3}}}, "config: unknown key 'data.synthetic.n_vall'"),
    ],
)
def test_unknown_key_is_rejected_with_its_dotted_name(raw, expected):
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("raw", "key", "value", "expected"),
    [
        ({"seed": "abc"}, "seed", "'abc'", "integer"),
        ({"models": {"m": _model(lr="fast")}}, "models.m.lr", "'fast'", "number"),
        ({"train": {"gpus": 1.5}}, "train.gpus", "1.5", "integer"),
        ({"data": {"spacing_nm": "8"}}, "data.spacing_nm", "'8'", "array"),
    ],
)
def test_wrong_type_names_key_value_and_expected_type(raw, key, value, expected):
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    msg = str(err.value)
    assert f"'{key}'" in msg and value in msg and f"expected {expected}" in msg


def test_class_weights_of_wrong_length_are_rejected():
    with pytest.raises(ConfigError, match="models.m.class_weights"):
        config.from_dict({"models": {"m": _model(class_weights=[1, 2, 3])}})


def test_unknown_network_type_is_rejected():
    with pytest.raises(ConfigError, match="models.m.network.type"):
        config.from_dict({"models": {"m": {"network": {"type": "unet"}}}})


def test_segresnet_without_ds_weights_is_rejected():
    with pytest.raises(ConfigError, match="models.m.ds_weights"):
        config.from_dict({"models": {"m": {"network": {"type": "segresnet"}}}})


def test_unknown_model_name_is_a_clear_error():
    cfg = config.load(DEFAULT)
    with pytest.raises(ConfigError, match="unknown model key 'unet'"):
        cfg.model("unet")


def test_defaults_do_not_leak_between_models():
    cfg = config.from_dict({"models": {"a": _model(), "b": _model()}})
    cfg.models["a"].network.args["blocks_down"].append(9)
    assert cfg.models["b"].network.args["blocks_down"] == [1, 2, 2, 4, 4]
    assert config.from_dict({"models": {"c": _model()}}).models["c"].network.args[
        "blocks_down"
    ] == [1, 2, 2, 4, 4]


@pytest.mark.parametrize("path", [DEFAULT, CLUSTER])
def test_both_shipped_configs_define_the_three_spec_models(path):
    cfg = config.load(path)
    assert set(cfg.models) == {"segresnet", "swinunetr", "flexunet_resnet34"}
    for m in cfg.models.values():
        assert tuple(m.class_weight_list(cfg.classes)) == SPEC_WEIGHTS
    assert cfg.models["flexunet_resnet34"].lvl_weights == (0, 0, 0, 1)
    assert cfg.models["flexunet_resnet34"].mixup_p == 1.0
    assert cfg.models["flexunet_resnet34"].optimizer == "Adam"


def test_cluster_config_carries_the_spec_values():
    cfg = config.load(CLUSTER)
    seg, swin, flex = (cfg.models[k] for k in ("segresnet", "swinunetr", "flexunet_resnet34"))
    assert {cfg.world_size(m) for m in cfg.models} == {7}  # one after another
    assert cfg.allocation("segresnet") == config.Allocation(gpus=7, cpus=63, mem_gb=920,
                                                            nodes=1)
    assert cfg.data.synthetic.enabled is False
    assert cfg.data.datalist.endswith("auto3dseg/nifti_data/datalist.json")
    assert seg.network.args["init_filters"] == 32
    assert seg.network.args["blocks_down"] == [1, 2, 2, 4, 4]
    assert seg.ds_weights == (1.0, 0.5, 0.25, 0.125)
    assert (seg.roi_size, seg.lr, seg.epochs, seg.eval_epochs) == ((128,) * 3, 2e-4, 200, 10)
    assert swin.network.args["feature_size"] == 48 and swin.network.args["use_v2"] is True
    assert (swin.roi_size, swin.lr, swin.epochs) == ((96,) * 3, 1e-4, 200)
    assert flex.network.args["backbone"] == "resnet34"
    assert flex.network.args["pretrained"] is False
    assert (flex.roi_size, flex.batch_size, flex.lr, flex.epochs, flex.eval_epochs) == (
        (96,) * 3, 4, 1e-3, 100, 5,
    )


def test_cluster_config_over_the_default_inherits_no_cpu_sizes():
    """Snakemake merges --configfile over config/config.yaml: the cluster file must set every
    key the CPU default sets, or CPU sizes would leak into the real run."""
    merged = config.to_dict(config.load(DEFAULT, CLUSTER))
    alone = config.to_dict(config.load(CLUSTER))
    merged["data"].pop("synthetic")
    alone["data"].pop("synthetic")
    assert merged == alone


def test_resolved_config_round_trips(tmp_path):
    cfg = config.load(DEFAULT)
    out = tmp_path / "resolved.yaml"
    config.write_resolved(cfg, out)
    again = config.from_dict(yaml.safe_load(out.read_text()))
    assert again == cfg


def test_cli_reports_a_bad_config_in_one_line_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  segresnet:\n    network: {type: segresnet}\n    ds_weights: [1]\n"
                   "    lr: fast\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cellmapseg", "-c", str(bad), "inventory", "--out",
         str(tmp_path / "inv.csv")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        "error: config: key 'models.segresnet.lr' has value 'fast' of type string; expected number"
    ]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "inv.csv").exists()


# --- each model's job: its allocation, and the world size the job got ----------------------

def test_a_model_allocation_replaces_the_shared_keys_it_sets():
    cfg = config.from_dict({"train": {"gpus": 7, "allocation": {"cpus": 63, "mem_gb": 920}},
                            "models": {"a": {"network": {"type": "swinunetr"}},
                                       "b": {"network": {"type": "swinunetr"},
                                             "allocation": {"gpus": 2, "mem_gb": 300}}}})
    assert cfg.allocation("a") == config.Allocation(gpus=7, cpus=63, mem_gb=920, nodes=1)
    assert cfg.allocation("b") == config.Allocation(gpus=2, cpus=63, mem_gb=300, nodes=1)
    assert (cfg.world_size("a"), cfg.world_size("b")) == (7, 2)
    assert cfg.allocation("b").mem_mb == 300 * 1024
    # the probe runs in the largest job, at its ranks per node
    assert cfg.probe_allocation == config.Allocation(gpus=7, cpus=63, mem_gb=920, nodes=1)


def test_nodes_multiply_the_ranks_per_node():
    gpu = config.from_dict({"train": {"gpus": 4, "allocation": {"nodes": 2}},
                            "models": {"a": {"network": {"type": "swinunetr"}}}})
    assert (gpu.ranks_per_node("a"), gpu.world_size("a")) == (4, 8)
    cpu = config.from_dict({"train": {"gpus": 0, "cpu_ranks": 1, "allocation": {"nodes": 2}},
                            "models": {"a": {"network": {"type": "swinunetr"}}}})
    assert (cpu.ranks_per_node("a"), cpu.world_size("a")) == (1, 2)


MODEL_A = {"models": {"a": {"network": {"type": "swinunetr"}}}}


def test_gpu_run_takes_its_world_size_from_the_allocation():
    cfg = config.from_dict({"train": {"gpus": 7}, **MODEL_A})
    four = config.with_allocation(cfg, "a", 4)
    assert four.world_size("a") == 4
    assert config.to_dict(four)["models"]["a"]["allocation"]["gpus"] == 4  # resolved config too
    assert cfg.world_size("a") == 7  # the original is unchanged
    assert config.with_allocation(cfg, "a", 7) is cfg
    assert config.with_allocation(cfg, "a", 4, nodes=2).world_size("a") == 8


def test_cpu_run_keeps_its_ranks_under_a_gpu_allocation():
    cfg = config.from_dict({"train": {"gpus": 0, "cpu_ranks": 2}, **MODEL_A})
    assert config.with_allocation(cfg, "a", 7).world_size("a") == 2  # embedded default, Slurm


def test_gpu_run_without_gpus_in_its_allocation_is_a_clear_error():
    cfg = config.from_dict({"train": {"gpus": 7}, **MODEL_A})
    with pytest.raises(ConfigError, match=r"train.gpus' = 7 .* resources.gpu = 0"):
        config.with_allocation(cfg, "a", 0)


def test_findings_overlay_turns_on_what_the_field_found_and_keeps_the_rest_of_the_cluster():
    findings = ROOT / "config" / "cluster_findings.yaml"
    base = config.load(DEFAULT, CLUSTER)
    cfg = config.load(DEFAULT, CLUSTER, findings)
    for name, m in cfg.models.items():
        assert (m.ema_decay, m.sampling, m.class_weights, m.mixup_p) == (
            0.999, "class_weighted", "log_inverse", 0.0), name
        spec = base.model(name)
        assert spec.ema_decay is None and spec.sampling == "uniform" and spec.mixup_p > 0
        assert (m.network, m.roi_size, m.lr, m.epochs) == (
            spec.network, spec.roi_size, spec.lr, spec.epochs)
    # side by side: two GPUs each, and the three jobs together fit the spec's reserved node
    jobs = [cfg.allocation(n) for n in cfg.models]
    assert {a.gpus for a in jobs} == {2} and all(a.nodes == 1 for a in jobs)
    spec_node = base.allocation("segresnet")
    assert (sum(a.gpus for a in jobs), sum(a.cpus for a in jobs)) <= (7, spec_node.cpus)
    assert sum(a.mem_gb for a in jobs) <= spec_node.mem_gb
