"""Experiment tracking beside metrics.csv, written by rank 0: TensorBoard event files
(`train.tensorboard`) and MLflow's offline file store (`train.mlflow`), one value per metrics
column per epoch.

TensorBoard: a resumed run opens its writer with purge_step = the first epoch it will train, so
TensorBoard drops whatever a killed run logged after its checkpoint.
MLflow cannot drop points, so an epoch is logged only once its checkpoint is written; a resumed
run reopens the same MLflow run (its id is kept in the train folder) and first logs the epochs
of its checkpoint's history that the store does not have yet. Either way each curve has one
point per epoch, the same as metrics.csv.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cellmapseg.atomic import write_text
from cellmapseg.errors import InputError

EXPERIMENT = "cellmapseg"


class Tracker:
    """Logs one metrics row per epoch; does nothing when disabled or not on rank 0."""

    def __init__(self, folder: Path | None, first_epoch: int) -> None:
        self.writer: Any = None
        if folder is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder), purge_step=first_epoch)

    def log(self, row: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        epoch = int(row["epoch"])
        for key, value in _values(row).items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _values(row: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and v is not None and not math.isnan(float(v))}


def flat_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config values as MLflow params ("network.type": "segresnet")."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


class MlflowRun:
    """One MLflow run per model's training, in the file store `store` (results/mlruns).

    MLflow 3 keeps the file store in maintenance mode and refuses it unless
    MLFLOW_ALLOW_FILE_STORE is set; it is the offline store that needs no server or database,
    so this run process sets it."""

    def __init__(self, store: Path, id_file: Path, model: str, params: Mapping[str, Any],
                 history: Iterable[Mapping[str, float]]) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise InputError("config: key 'train.mlflow' needs the mlflow-skinny package "
                             "(pyproject.toml pins it: rerun ./setup.sh)") from None
        self.client = MlflowClient(tracking_uri=store.resolve().as_uri())
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if run_id is None:
            run_id = self.client.create_run(self._experiment(), run_name=model,
                                            tags={"model": model}).info.run_id
            self.client.log_batch(run_id, params=self._params(params))
            write_text(id_file, run_id + "\n")
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        logged = self.client.get_metric_history(run_id, "train_loss")
        self.logged = max((m.step for m in logged), default=0)
        for row in history:  # epochs checkpointed by a run killed before it logged them
            self.log(row)

    def _experiment(self) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(EXPERIMENT)
        except MlflowException:  # another model's job created it first (jobs side by side)
            found = self.client.get_experiment_by_name(EXPERIMENT)
            if found is None:
                raise
            return found.experiment_id

    @staticmethod
    def _params(params: Mapping[str, Any]) -> list[Any]:
        from mlflow.entities import Param

        return [Param(k, v) for k, v in flat_params(params).items()]

    def log(self, row: Mapping[str, float]) -> None:
        """Log one checkpointed epoch (once: epochs the store has are skipped)."""
        from mlflow.entities import Metric

        epoch = int(row["epoch"])
        if epoch <= self.logged:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, v, now, epoch) for k, v in _values(row).items()])
        self.logged = epoch

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")
