"""Experiment tracking beside metrics.csv: TensorBoard event files, one scalar per metrics
column per epoch (`train.tensorboard`), written by rank 0.

A resumed run opens its writer with purge_step = the first epoch it will train, so TensorBoard
drops whatever a killed run logged after its checkpoint and the curve has one point per epoch,
the same as metrics.csv.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


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
        for key, value in row.items():
            if key != "epoch" and value is not None and not math.isnan(float(value)):
                self.writer.add_scalar(key, float(value), epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
