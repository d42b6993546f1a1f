"""Training options from the field's findings and the spec's config: EMA of the weights, fp16
with a GradScaler, SyncBN, weights-only / last-only / every-N checkpoints, class weights from the
inventory. Each trains in-process (one gloo rank) on a tiny synthetic dataset."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model, tiny_training_inputs
from torch import nn

from cellmapseg import config as config_mod
from cellmapseg.config import from_dict
from cellmapseg.data.inventory import read_inventory
from cellmapseg.errors import ConfigError
from cellmapseg.models import checkpoint
from cellmapseg.models.net import Net
from cellmapseg.predict.crops import load_model
from cellmapseg.train import distributed
from cellmapseg.train.loop import FAULT_ENV, Trainer
from cellmapseg.train.preflight import prepare_training

# 4 training crops x 2 sub-epochs = 8 items, batch 2: 4 optimizer steps per epoch
STEPS_PER_EPOCH = 4


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A tiny synthetic dataset, its inventory, a caching decision (strategy B: the compact
    store on disk) and one gloo process group of one rank for the module."""
    root = tmp_path_factory.mktemp("options")
    raw = tiny_training_inputs(root, n_val=2, large_shape=[32, 32, 32])
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                            "LOCAL_RANK")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    d = distributed.setup(0)
    yield root, raw, d
    distributed.teardown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def make_trainer(job, out: Path, **model) -> Trainer:
    root, raw, d = job
    cfg = from_dict({**raw, "train": {"cpu_ranks": 1, "num_workers": 0},
                     "models": {"tiny": tiny_model(**{"epochs": 2, **model})}})
    cfg = prepare_training(cfg, cfg.model("tiny"), root / "inventory.csv",
                           root / "caching.json", 1)
    return Trainer(cfg, "tiny", read_inventory(root / "inventory.csv"),
                   json.loads((root / "caching.json").read_text()), d, out)


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ema_weights_differ_from_the_raw_ones_and_are_what_validation_and_best_use(
        job, tmp_path, monkeypatch):
    import cellmapseg.train.loop as loop

    seen = []
    real = loop.validate
    monkeypatch.setattr(loop, "validate", lambda predict, *a: seen.append(predict) or
                        real(predict, *a))
    trainer = make_trainer(job, tmp_path / "ema", ema_decay=0.9, checkpoint_every=1)
    trainer.fit()
    ema, raw = trainer.ema.module.state_dict(), trainer.net.state_dict()
    assert not same_tensors(ema, raw)
    assert all(p.__self__ is trainer.ema.module for p in seen) and len(seen) == 2
    folder = tmp_path / "ema/checkpoints"
    last = checkpoint.inference_weights(checkpoint.load(folder / "epoch_0002.pt", "tiny"))
    assert same_tensors(last, ema)
    # the best checkpoint holds the EMA weights of its epoch, and prediction loads those
    at_best = checkpoint.load(folder / f"epoch_{trainer.best_epoch:04d}.pt", "tiny")
    net, _ = load_model(trainer.m, trainer.cfg.classes, folder / "best.pt", torch.device("cpu"))
    assert same_tensors(net.state_dict(), checkpoint.inference_weights(at_best))
    assert int(trainer.ema.n_averaged) == 2 * STEPS_PER_EPOCH


def test_ema_resumes_exactly_after_a_failure_mid_epoch(job, tmp_path, monkeypatch):
    whole = make_trainer(job, tmp_path / "whole", ema_decay=0.9)
    whole.fit()
    monkeypatch.setenv(FAULT_ENV, f"rank=0,step={STEPS_PER_EPOCH + 2},kind=raise")
    with pytest.raises(RuntimeError, match="injected fault"):
        make_trainer(job, tmp_path / "cut", ema_decay=0.9).fit()
    monkeypatch.delenv(FAULT_ENV)
    resumed = make_trainer(job, tmp_path / "cut", ema_decay=0.9)
    assert resumed.epoch == 1 and int(resumed.ema.n_averaged) == STEPS_PER_EPOCH
    resumed.fit()
    assert same_tensors(resumed.ema.state_dict(), whole.ema.state_dict())
    assert same_tensors(resumed.net.state_dict(), whole.net.state_dict())


def test_fp16_path_runs_with_its_scaler(job, tmp_path, monkeypatch):
    # CPU training runs fp32; let autocast take float16 on the CPU as it would on CUDA
    dtypes = []
    monkeypatch.setattr(Net, "autocast", lambda self, device: torch.autocast(
        "cpu", dtype=self.dtype, enabled=self.dtype is not None))
    trainer = make_trainer(job, tmp_path / "fp16", mixed_precision=True, bf16=False, epochs=1)
    assert trainer.net.dtype == torch.float16 and trainer.scaler.is_enabled()
    trainer.net.network.register_forward_hook(lambda m, i, o: dtypes.append(o[0].dtype))
    trainer.fit()
    assert torch.float16 in dtypes
    state = checkpoint.load(tmp_path / "fp16/checkpoints/last.pt", "tiny")
    assert state["scaler"]["scale"] == trainer.scaler.get_scale() > 0
    assert trainer.step == STEPS_PER_EPOCH and np.isfinite(trainer.history[-1]["train_loss"])


def test_fp16_and_bf16_together_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"models\.tiny\.bf16.*must be false with "
                                          "mixed_precision"):
        from_dict({"models": {"tiny": tiny_model(mixed_precision=True)}})


def test_syncbn_replaces_the_norm_layers_under_gpu_ddp_and_keeps_the_state_keys():
    model = from_dict({"models": {"tiny": tiny_model(
        network={"type": "segresnet", "init_filters": 4, "blocks_down": [1, 1, 1],
                 "norm": "BATCH"})}}).model("tiny")
    ontology = from_dict({}).classes
    net = Net(model, ontology)
    keys = set(net.state_dict())
    gpu = distributed.Dist(rank=0, world=2, local_rank=0, device=torch.device("cuda", 0))
    synced = distributed.sync_batchnorm(net, True, gpu)
    kinds = {type(m) for m in synced.modules()}
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm3d not in kinds
    assert set(synced.state_dict()) == keys
    cpu = distributed.Dist(rank=0, world=2, local_rank=0, device=torch.device("cpu"))
    plain = Net(model, ontology)
    assert nn.BatchNorm3d in {type(m) for m in distributed.sync_batchnorm(plain, True, cpu)
                              .modules()}
    one = distributed.Dist(rank=0, world=1, local_rank=0, device=torch.device("cuda", 0))
    assert nn.SyncBatchNorm not in {type(m) for m in distributed.sync_batchnorm(
        Net(model, ontology), True, one).modules()}


def test_weights_only_last_only_and_every_n_checkpoints_load(job, tmp_path):
    trainer = make_trainer(job, tmp_path / "w", checkpoint_every=1)
    summary = trainer.fit()
    best = checkpoint.load(tmp_path / "w/checkpoints/best.pt", "tiny")
    assert "optimizer" not in best and summary["checkpoint"] == "checkpoints/best.pt"
    for epoch in (1, 2):
        kept = checkpoint.load(tmp_path / f"w/checkpoints/epoch_{epoch:04d}.pt", "tiny")
        assert kept["epoch"] == epoch and "optimizer" not in kept
    net, meta = load_model(trainer.m, trainer.cfg.classes, tmp_path / "w/checkpoints/best.pt",
                           torch.device("cpu"))
    assert meta["epoch"] == trainer.best_epoch

    last_only = make_trainer(job, tmp_path / "l", save_only_last_ckpt=True,
                             save_weights_only=False)
    summary = last_only.fit()
    assert summary["checkpoint"] == "checkpoints/last.pt"
    assert not (tmp_path / "l/checkpoints/best.pt").exists()
    net, meta = load_model(last_only.m, last_only.cfg.classes, tmp_path / "l/checkpoints/last.pt",
                           torch.device("cpu"))
    assert meta["epoch"] == 2 and same_tensors(net.state_dict(), last_only.net.state_dict())

    full = make_trainer(job, tmp_path / "f", save_weights_only=False, epochs=1)
    full.fit()
    assert "optimizer" in checkpoint.load(tmp_path / "f/checkpoints/best.pt", "tiny")


def test_class_weights_from_the_inventory_are_written_into_the_resolved_config(job, tmp_path):
    trainer = make_trainer(job, tmp_path / "cw", class_weights="sqrt_inverse", epochs=1)
    weights = trainer.m.class_weights
    assert isinstance(weights, tuple) and len(weights) == trainer.cfg.classes.num_channels
    assert torch.equal(trainer.net.loss.class_weights, torch.tensor(weights))
    config_mod.write_resolved(trainer.cfg, tmp_path / "resolved.yaml")
    again = config_mod.load(tmp_path / "resolved.yaml")
    assert again.model("tiny").class_weights == weights


def test_class_weighted_sampling_trains_the_same_number_of_steps(job, tmp_path):
    from cellmapseg.data.sampling import WeightedEpochSampler

    trainer = make_trainer(job, tmp_path / "cls", sampling="class_weighted", epochs=1)
    assert isinstance(trainer.data.sampler, WeightedEpochSampler)
    assert trainer.fit()["steps"] == STEPS_PER_EPOCH


@pytest.mark.parametrize("gpus", [0, 2])
def test_gpu_training_jobs_get_the_specs_cuda_environment(gpus, tmp_path, monkeypatch):
    from cellmapseg import stages
    from cellmapseg.runtime import torchrun
    from cellmapseg.train import preflight

    seen = {}
    monkeypatch.setattr(preflight, "prepare_training", lambda cfg, *a: cfg)
    monkeypatch.setattr(torchrun, "run_logged", lambda cmd, env, *a: seen.update(env))
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    cfg = from_dict({"train": {"gpus": gpus}, "models": {"tiny": tiny_model()}})
    stages.train(cfg, "tiny", tmp_path / "inv.csv", tmp_path / "caching.json", tmp_path / "out")
    cuda = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "NVIDIA_TF32_OVERRIDE": "1"}
    assert all((seen.get(k) == v) == (gpus > 0) for k, v in cuda.items())


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_events_hold_the_metrics_of_metrics_csv(job, tmp_path):
    import pandas as pd

    trainer = make_trainer(job, tmp_path / "tb")
    trainer.fit()
    metrics = pd.read_csv(tmp_path / "tb/metrics.csv")
    for tag in ("train_loss", "lr", "val_dice_mean"):
        logged = scalars(tmp_path / "tb/tensorboard", tag)
        assert [s for s, _ in logged] == list(metrics["epoch"])
        np.testing.assert_allclose([v for _, v in logged], metrics[tag], rtol=1e-6)
    root, raw, d = job
    cfg = from_dict({**raw, "train": {"cpu_ranks": 1, "num_workers": 0, "tensorboard": False},
                     "models": {"tiny": tiny_model(epochs=1)}})
    Trainer(cfg, "tiny", read_inventory(root / "inventory.csv"),
            json.loads((root / "caching.json").read_text()), d, tmp_path / "off").fit()
    assert not (tmp_path / "off/tensorboard").exists()


def test_a_resumed_runs_events_replace_those_logged_after_its_checkpoint(tmp_path):
    from cellmapseg.train.tracking import Tracker

    first = Tracker(tmp_path, 1)
    for epoch in (1, 2, 3):  # epochs 2 and 3 logged, then the job died before checkpointing
        first.log({"epoch": epoch, "train_loss": float(epoch)})
    first.close()
    again = Tracker(tmp_path, 2)  # resumed from epoch 1's checkpoint
    for epoch in (2, 3):
        again.log({"epoch": epoch, "train_loss": 10.0 * epoch})
    again.close()
    assert scalars(tmp_path, "train_loss") == [(1, 1.0), (2, 20.0), (3, 30.0)]


def mlflow_runs(results: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(results / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("cellmapseg")
    return client, client.search_runs([experiment.experiment_id])


def history(client, run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


def test_mlflow_store_holds_one_run_per_model_with_its_config_and_metrics(job, tmp_path):
    import pandas as pd

    results = tmp_path / "results"
    root, raw, d = job
    cfg = from_dict({**raw, "train": {"cpu_ranks": 1, "num_workers": 0, "mlflow": True,
                                      "tensorboard": False},
                     "models": {"tiny": tiny_model(epochs=2)}})
    Trainer(cfg, "tiny", read_inventory(root / "inventory.csv"),
            json.loads((root / "caching.json").read_text()), d, results / "tiny/train").fit()
    client, runs = mlflow_runs(results)
    (run,) = runs
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == str(cfg.model("tiny").lr)
    assert run.data.params["network.type"] == "segresnet"
    metrics = pd.read_csv(results / "tiny/train/metrics.csv")
    for key in ("train_loss", "lr", "val_dice_mean"):
        logged = history(client, run, key)
        assert [s for s, _ in logged] == list(metrics["epoch"])
        np.testing.assert_allclose([v for _, v in logged], metrics[key], rtol=1e-6)


def test_a_resumed_run_continues_its_mlflow_run_with_one_point_per_epoch(tmp_path):
    from cellmapseg.train.tracking import MlflowRun

    store, id_file = tmp_path / "mlruns", tmp_path / "tiny/train/mlflow_run_id"
    id_file.parent.mkdir(parents=True)
    rows = [{"epoch": e, "train_loss": float(e)} for e in (1, 2, 3)]
    first = MlflowRun(store, id_file, "tiny", {"lr": 0.1, "network": {"type": "x"}}, [])
    first.log(rows[0])  # epoch 1 checkpointed and logged; the job died after checkpointing 2
    again = MlflowRun(store, id_file, "tiny", {"lr": 0.1, "network": {"type": "x"}}, rows[:2])
    again.log(rows[2])
    again.log(rows[2])  # logged once whatever calls it twice
    again.close(finished=True)
    assert again.run_id == first.run_id
    client, (run,) = mlflow_runs(tmp_path)
    assert history(client, run, "train_loss") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert run.data.params == {"lr": "0.1", "network.type": "x"}


@pytest.mark.slow
def test_swinunetr_trains_bit_identically_whatever_cpus_the_job_was_given(job, tmp_path):
    """A local run and a Slurm job differ in the CPUs they are given (the threads passed to
    the train stage); SwinUNETR's Linear and LayerNorm weight gradients are summed in an order
    that depends on the thread count, so train.cpu_threads fixes it."""
    import pandas as pd

    from cellmapseg import stages

    root, raw, _ = job
    swin = tiny_model(network={"type": "swinunetr", "feature_size": 12, "depths": [1, 1, 1, 1]},
                      ds_weights=None, roi_size=[64, 32, 32], epochs=1)
    cfg = from_dict({**raw, "train": {"cpu_ranks": 1, "num_workers": 0},
                     "models": {"swin": swin}})
    runs = {}
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        stages.train(cfg, "swin", root / "inventory.csv", root / "caching.json", out, threads)
        runs[threads] = pd.read_csv(out / "metrics.csv")
        state = checkpoint.load(out / "checkpoints/last.pt", "swin")
        runs[threads]["weights"] = float(sum(v.double().sum() for v in state["model"].values()))
    cols = ["train_loss", "val_dice_mean", "weights"]
    pd.testing.assert_frame_equal(runs[1][cols], runs[2][cols], check_exact=True)
