"""The DDP training loop of one model config, run in every rank started by torchrun.

Per epoch: DistributedSampler epoch, compact batches moved to the device and expanded there,
bf16 autocast on CUDA (no GradScaler: bf16 needs none; fp16 with `mixed_precision` has one),
gradient accumulation with no_sync, grad-norm clipping, warmup+cosine per optimizer step, an EMA
of the weights after each step (`ema_decay`), loss summed on the device (one host sync per
epoch). Validation every eval_epochs and at the end, with the EMA weights when there are any;
`last` (the whole state) every epoch and `best` (what prediction reads) on improvement,
atomically. A rerun resumes from `last` and finishes the same schedule.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cellmapseg.atomic import atomic_path, write_json
from cellmapseg.config import Config, to_dict, to_yaml
from cellmapseg.data.batch import prepare_batch
from cellmapseg.layout import TrainFiles
from cellmapseg.models import checkpoint
from cellmapseg.models.net import Net
from cellmapseg.models.registry import count_parameters
from cellmapseg.train.data import TrainData, make_data, steps_per_epoch
from cellmapseg.train.distributed import Dist, all_gather, mean, sync_batchnorm
from cellmapseg.train.schedule import make_scheduler
from cellmapseg.train.tracking import MlflowRun, Tracker
from cellmapseg.train.validation import validate

log = logging.getLogger(__name__)


FAULT_ENV = "CELLMAPSEG_FAULT"


def fault_from_env() -> tuple[int, int, str] | None:
    """Fault injection for tests: CELLMAPSEG_FAULT="rank=R,step=S,kind=raise|kill" makes rank R
    raise a RuntimeError (kind=raise) or SIGKILL itself (kind=kill) right after optimizer step
    S. Unset (the normal case) it does nothing."""
    text = os.environ.get(FAULT_ENV, "").strip()
    if not text:
        return None
    try:
        spec = dict(part.split("=", 1) for part in text.split(","))
        fault = int(spec["rank"]), int(spec["step"]), spec.get("kind", "raise")
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{FAULT_ENV}={text!r}: expected rank=R,step=S,kind=raise|kill") from exc
    if fault[2] not in ("raise", "kill"):
        raise ValueError(f"{FAULT_ENV}={text!r}: kind must be raise or kill")
    return fault


def inject_fault(fault: tuple[int, int, str] | None, rank: int, step: int) -> None:
    if fault is None or (fault[0], fault[1]) != (rank, step):
        return
    log.error("rank %d: injected fault (%s) after step %d", rank, fault[2], step)
    if fault[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault: rank {rank} raised after step {step}")


def metric_columns(atomic: Sequence[str]) -> list[str]:
    return ["epoch", "step", "train_loss", "lr", "seconds", "patches_per_s", "peak_host_rss_bytes",
            "peak_gpu_bytes", "val_dice_mean", *(f"val_dice_{n}" for n in atomic)]


class Trainer:
    def __init__(self, cfg: Config, name: str, inventory: pd.DataFrame,
                 selection: dict[str, Any], d: Dist, out: str | Path) -> None:
        self.cfg, self.name, self.m, self.d = cfg, name, cfg.model(name), d
        self.paths = TrainFiles(Path(out))
        self.data: TrainData = make_data(cfg, self.m, inventory, selection, d)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.net = sync_batchnorm(Net(self.m, cfg.classes), self.m.syncbn, d).to(d.device)
        self.parameters = count_parameters(self.net)
        # the averaged copy holds buffers too (batch-norm statistics follow the weights)
        self.ema = None if self.m.ema_decay is None else AveragedModel(
            self.net, multi_avg_fn=get_ema_multi_avg_fn(self.m.ema_decay), use_buffers=True)
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=self.m.mixed_precision)
        self.model = DDP(self.net, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
                         find_unused_parameters=False)
        self.steps_per_epoch = steps_per_epoch(len(self.data.loader.dataset), d.world,
                                               self.m.batch_size, self.m.grad_accumulation)
        self.total_steps = self.steps_per_epoch * self.m.epochs
        opt_cls = torch.optim.AdamW if self.m.optimizer == "AdamW" else torch.optim.Adam
        self.optimizer = opt_cls(self.net.parameters(), lr=self.m.lr,
                                 weight_decay=self.m.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, self.total_steps, self.m.warmup)
        self.epoch = self.step = 0
        self.best_score, self.best_epoch = -math.inf, -1
        self.history: list[dict[str, float]] = []
        self.fault = fault_from_env()
        torch.manual_seed(cfg.seed + 1000 * (d.rank + 1))  # Mixup draws differ per rank
        self._resume()
        self.tracker = Tracker(self.paths.tensorboard if cfg.train.tensorboard and d.is_main
                               else None, self.epoch + 1)
        self.mlflow = (MlflowRun(self.paths.mlruns, self.paths.mlflow_run_id, name,
                                 {"seed": cfg.seed, "world_size": d.world, **to_dict(self.m)},
                                 self.history)
                       if cfg.train.mlflow and d.is_main else None)

    # --- checkpoints ------------------------------------------------------------------------

    def _network_dict(self) -> dict[str, Any]:
        return checkpoint.identity(self.m.network.as_dict(), self.cfg.classes.atomic)

    def _run_config(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: this model's section and the seed."""
        return {"seed": self.cfg.seed, "model": to_dict(self.m),
                "classes": to_dict(self.cfg.classes)}

    def _state(self) -> dict[str, Any]:
        cuda = self.d.device.type == "cuda"
        rng_cpu = all_gather(torch.get_rng_state())
        rng_cuda = all_gather(torch.cuda.get_rng_state(self.d.device) if cuda else None)
        return {
            **self._weights_state(),
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "history": self.history, "world_size": self.d.world,
            "rng_cpu": rng_cpu, "rng_cuda": rng_cuda if cuda else [],
        }

    def _weights_state(self) -> dict[str, Any]:
        """What prediction needs (a weights-only checkpoint): the identity and the weights it
        predicts with, the EMA's when there is one (checkpoint.inference_weights)."""
        state = {
            "model_name": self.name, "network": self._network_dict(),
            "config_yaml": to_yaml(self.cfg), "run_config": self._run_config(),
            "epoch": self.epoch, "step": self.step, "best_score": self.best_score,
            "best_epoch": self.best_epoch,
        }
        if self.ema is not None:
            state["ema_model"] = self.ema.module.state_dict()
        else:
            state["model"] = self.net.state_dict()
        return state

    def _resume(self) -> None:
        if not self.paths.last.is_file():
            return
        state = checkpoint.load(self.paths.last, self.name, self._network_dict())
        checkpoint.check_same_run(self.paths.last, state, self._run_config())
        checkpoint.check_same_world(self.paths.last, state, self.d.world)
        self.net.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
        self.history = list(state["history"])
        torch.set_rng_state(state["rng_cpu"][self.d.rank])
        if state["rng_cuda"]:
            torch.cuda.set_rng_state(state["rng_cuda"][self.d.rank], self.d.device)
        if self.d.is_main:
            log.info("resumed %s from %s at epoch %d, step %d", self.name, self.paths.last,
                     self.epoch, self.step)

    def _save(self, improved: bool) -> None:
        state = self._state()  # collective: every rank contributes its RNG state
        if self.d.is_main:
            checkpoint.save(self.paths.last, state)
            kept = self._weights_state() if self.m.save_weights_only else state
            if improved and not self.m.save_only_last_ckpt:
                checkpoint.save(self.paths.best, kept)
            every = self.m.checkpoint_every
            if every and self.epoch % every == 0:
                checkpoint.save(self.paths.epoch(self.epoch), self._weights_state())
            self._write_metrics()
        torch.distributed.barrier()

    def _write_metrics(self) -> None:
        frame = pd.DataFrame(self.history, columns=metric_columns(self.cfg.classes.atomic))
        with atomic_path(self.paths.metrics) as tmp:
            frame.to_csv(tmp, index=False)

    # --- one epoch --------------------------------------------------------------------------

    def _train_epoch(self) -> tuple[float, int]:
        self.model.train()
        self.data.sampler.set_epoch(self.epoch)
        accum = self.m.grad_accumulation
        micro_steps = self.steps_per_epoch * accum
        loss_sum = torch.zeros((), device=self.d.device)
        progress = _progress(micro_steps, f"{self.name} epoch {self.epoch + 1}", self.d.is_main)
        done = 0
        for i, batch in enumerate(self.data.loader):
            if i >= micro_steps:
                break
            b = prepare_batch(batch, self.cfg.classes.labels, self.d.device)
            last_micro = (i + 1) % accum == 0
            sync = nullcontext() if last_micro else self.model.no_sync()
            with sync:  # Net applies autocast itself (network, Mixup and loss together)
                out = self.model({"input": b.input, "target": b.target,
                                  "annotation_mask": b.annotation_mask, "valid": b.valid})
                self.scaler.scale(out["loss"] / accum).backward()
            loss_sum += out["loss"].detach()
            done += 1
            if last_micro:
                self._optimizer_step()
                inject_fault(self.fault, self.d.rank, self.step)
            progress.update(1)
        progress.close()
        patches = done * self.m.batch_size * self.m.num_samples * self.d.world
        return mean(loss_sum / max(done, 1)), patches

    def _optimizer_step(self) -> None:
        """Clip, step (through the scaler: with fp16 a step whose gradients overflowed is
        skipped and the scale lowered), schedule, and update the EMA."""
        if self.m.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.m.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        self.step += 1

    def _validate(self) -> tuple[float, dict[str, float]]:
        net = self.ema.module if self.ema is not None else self.net
        net.eval()
        score = validate(net.predict, self.data.validation, self.d, self.m.roi_size,
                         self.cfg.inference, self.cfg.classes)
        net.train()
        return score

    def fit(self) -> dict[str, Any]:
        while self.epoch < self.m.epochs:
            if self.d.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.d.device)
            start = time.perf_counter()
            loss, patches = self._train_epoch()
            seconds = time.perf_counter() - start
            lr = self.scheduler.get_last_lr()[0]
            self.epoch += 1
            row: dict[str, float] = {
                "epoch": self.epoch, "step": self.step, "train_loss": loss, "lr": lr,
                "seconds": seconds, "patches_per_s": patches / seconds,
                "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "peak_gpu_bytes": (torch.cuda.max_memory_allocated(self.d.device)
                                   if self.d.device.type == "cuda" else 0),
            }
            improved = False
            if self.epoch % self.m.eval_epochs == 0 or self.epoch == self.m.epochs:
                score, per_class = self._validate()
                row["val_dice_mean"] = score
                row.update({f"val_dice_{n}": v for n, v in per_class.items()})
                improved = score > self.best_score or self.best_epoch < 0
                if improved:
                    self.best_score, self.best_epoch = score, self.epoch
            self.history.append(row)
            self.tracker.log(row)
            if self.d.is_main:
                log.info("%s epoch %d/%d step %d loss %.4f lr %.2e %.1fs%s", self.name,
                         self.epoch, self.m.epochs, self.step, loss, lr, seconds,
                         f" val dice {row['val_dice_mean']:.4f}" if "val_dice_mean" in row else "")
            self._save(improved)
            if self.mlflow is not None:  # after the checkpoint: MLflow cannot drop points
                self.mlflow.log(row)
        self.tracker.close()
        if self.mlflow is not None:
            self.mlflow.close(finished=True)
        return self._summary()

    def _summary(self) -> dict[str, Any]:
        rows = pd.DataFrame(self.history, columns=metric_columns(self.cfg.classes.atomic))
        summary = {
            "model": self.name, "network": self.m.network.type, "parameters": self.parameters,
            "epochs": self.epoch, "steps": self.step, "best_epoch": self.best_epoch,
            "best_val_dice": self.best_score, "wall_seconds": float(rows["seconds"].sum()),
            "patches_per_s": float(rows["patches_per_s"].mean()),
            "peak_host_rss_bytes": int(rows["peak_host_rss_bytes"].max()),
            "peak_gpu_bytes": int(rows["peak_gpu_bytes"].max()),
            "caching_strategy": self.data.strategy, "world_size": self.d.world,
            "device": self.d.device.type, "ema": self.ema is not None,
            # what prediction reads: the best epoch's weights, or the last's
            "checkpoint": TrainFiles.LAST if self.m.save_only_last_ckpt else TrainFiles.BEST,
            "checkpoint_last": TrainFiles.LAST,
        }
        if self.d.is_main:
            self._write_metrics()  # also when resuming a finished run: Snakemake removed it
            write_json(self.paths.summary, summary)
        return summary


class _NoProgress:
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, desc: str, main: bool) -> Any:  # tqdm or a stub
    """A tqdm bar on rank 0 when attached to a terminal; nothing in batch jobs and logs."""
    if main and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False)
    return _NoProgress()
