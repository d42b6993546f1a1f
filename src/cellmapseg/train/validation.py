"""Validation every eval_epochs: whole volumes through the predict stage's block-wise sliding
window, Dice per annotated channel, gathered across ranks (each rank scores its share of the
volumes). Memory on the device and the host is bounded by inference.block_size, whatever the
crop's size."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from cellmapseg.classes import Ontology
from cellmapseg.config import InferenceConfig
from cellmapseg.data.volumes import Volume, VolumeSource
from cellmapseg.evaluate.metrics import mean_dice
from cellmapseg.predict.blocks import predict_blocks
from cellmapseg.predict.window import binarise
from cellmapseg.train.distributed import Dist, all_gather


def confusion_counts(pred: torch.Tensor, target: torch.Tensor,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """(C, 3) int64 tensor of tp, fp, fn per channel for bool-like (C, ...) prediction/target,
    counted on the tensors' device (evaluate.metrics' rule)."""
    pred, target = pred.bool(), target.bool()
    if valid is not None:
        valid = valid.bool().expand_as(pred)
        pred, target = pred & valid, target & valid
    dims = tuple(range(1, pred.ndim))
    tp = (pred & target).sum(dims)
    fp = (pred & ~target).sum(dims)
    fn = (~pred & target).sum(dims)
    return torch.stack([tp, fp, fn], dim=1).long()


def score_volume(predict: Callable[[torch.Tensor], torch.Tensor], volume: Volume,
                 roi: Sequence[int], cfg: InferenceConfig, device: torch.device,
                 labels: Sequence[int]) -> np.ndarray:
    """(C, 3) tp, fp, fn of one whole volume, counted block by block on `device` against the
    compact label (predict.blocks, the predict stage's predictor): neither the device nor the
    host ever holds the crop's logits or its one-hot target, only a block's. Channel c is
    the label value `labels[c]`."""
    thresholds = cfg.thresholds(len(labels))
    block = [cfg.block_size] * 3
    values = torch.tensor(list(labels), device=device, dtype=torch.uint8)
    counts = torch.zeros((len(labels), 3), dtype=torch.long, device=device)
    for core, logits in predict_blocks(predict, volume.image, volume.mean, volume.std, roi, cfg,
                                       block, device, to_cpu=False):
        pred = binarise(logits[None], thresholds)[0]
        label = torch.from_numpy(np.ascontiguousarray(volume.label[core])).to(device)
        padding = volume.padding_mask(core)
        valid = None if padding is None else torch.from_numpy(~padding).to(device)[None]
        counts += confusion_counts(pred, label[None] == values.view(-1, 1, 1, 1), valid)
    return counts.cpu().numpy()


def score_volumes(predict: Callable[[torch.Tensor], torch.Tensor], source: VolumeSource,
                  indices: range, roi: tuple[int, ...], cfg: InferenceConfig,
                  device: torch.device, labels: Sequence[int]) -> list[dict]:
    """tp/fp/fn per annotated (crop, channel) for the volumes `indices` of `source`."""
    records = []
    with torch.no_grad():  # `predict` applies the model's own autocast
        for i in indices:
            volume = source.get(i)
            counts = score_volume(predict, volume, roi, cfg, device, labels)
            for c in np.flatnonzero(volume.annotation_mask):
                tp, fp, fn = (int(v) for v in counts[c])
                records.append({"crop": volume.name, "channel": int(c), "tp": tp, "fp": fp,
                                "fn": fn})
    return records


def validate(predict: Callable[[torch.Tensor], torch.Tensor], source: VolumeSource, d: Dist,
             roi: tuple[int, ...], cfg: InferenceConfig, ontology: Ontology
             ) -> tuple[float, dict[str, float]]:
    mine = score_volumes(predict, source, range(d.rank, len(source), d.world), roi, cfg,
                         d.device, ontology.labels)
    records = [r for part in all_gather(mine) for r in part]
    return mean_dice(records, list(ontology.atomic))
