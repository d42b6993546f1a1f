"""Predict crops with a trained model into the predictions store, in bounded memory.

Each image is streamed into a scratch .npy (predict.image) and predicted block by block
(predict.blocks). The network predicts the atomic classes; each group class is composed in the
same block as the union of its members' thresholded masks (groups are never trained). Semantic
classes become uint8 0/1 masks; instance classes, atomic or group, become uint32
connected-component ids (26-connectivity), labelled block by block and merged. The store
(data.predictions) is written under a temporary name and renamed when every crop is done.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr

from cellmapseg.classes import Ontology
from cellmapseg.config import Config, Entry, ModelConfig
from cellmapseg.data import inventory as inventory_mod
from cellmapseg.data import predictions, volume_io
from cellmapseg.data.caching import from_selection, stored_volume
from cellmapseg.data.volumes import Volume
from cellmapseg.errors import InputError
from cellmapseg.models import checkpoint
from cellmapseg.models.net import Net
from cellmapseg.predict.blocks import predict_blocks
from cellmapseg.predict.threshold import MaskWriter
from cellmapseg.predict.tta import IDENTITY, SINGLE_FLIPS, Transform, transforms

log = logging.getLogger(__name__)


def load_model(model: ModelConfig, ontology: Ontology, path: Path, device: torch.device
               ) -> tuple[Net, dict]:
    state = checkpoint.load(path, model.name,
                            checkpoint.identity(model.network.as_dict(), ontology.atomic))
    net = Net(model, ontology)
    net.load_state_dict(checkpoint.inference_weights(state))
    return net.to(device).eval(), {"epoch": int(state["epoch"]), "step": int(state["step"]),
                                   "best_score": float(state["best_score"])}


@contextlib.contextmanager
def crop_image(row: dict[str, Any], scratch: Path, stored: Volume | None
               ) -> Iterator[tuple[Any, str]]:
    """(image, source) of a crop: the training store's copy when this node holds it (no
    decompression; its pages are shared with training), else its file (NIfTI or Zarr crop
    reference) streamed once into a scratch .npy beside the output, removed afterwards."""
    if stored is not None:
        yield stored.image, "training store"
        return
    copy = scratch / f".{row['crop_id']}.npy"
    try:
        dtype = np.dtype(row["compact_image_dtype"])
        yield volume_io.stream_to_npy(row["image"], dtype, copy), "crop file"
    finally:
        copy.unlink(missing_ok=True)


def predict_crop(net: Net, row: dict[str, Any], image: Any, cfg: Config, roi: Sequence[int],
                 root: zarr.Group, device: torch.device,
                 translation: Sequence[float] = (0.0, 0.0, 0.0),
                 transforms: Sequence[Transform] | None = None,
                 kept: zarr.Group | None = None) -> dict[str, int]:
    """Predict one crop's `image` (any array read a region at a time) into `root`, its first
    voxel's centre at `translation` (nm), averaging over the TTA `transforms` (default: the
    inference section's); keep each atomic class's probability in `kept` (a probabilities
    store) when given. Return the number of instances per instance class."""
    if tuple(image.shape) != (int(row["d"]), int(row["h"]), int(row["w"])):
        raise InputError(f"crop {row['crop']}: image shape {image.shape} differs from the "
                         "inventory")
    ontology, spacing = cfg.classes, cfg.data.spacing_nm
    arrays = predictions.create_crop(root, row["crop_id"], image.shape, spacing, ontology,
                                     translation)
    probs = (predictions.create_probabilities(kept, row["crop_id"], image.shape, spacing,
                                              ontology, translation)
             if kept is not None else None)
    writer = MaskWriter(arrays, ontology, cfg.inference.thresholds(ontology.num_channels))
    block = [cfg.inference.block_size] * 3
    transforms = default_transforms(cfg) if transforms is None else transforms
    with torch.no_grad():
        for core, logits in predict_blocks(net.predict, image, float(row["image_mean"]),
                                           float(row["image_std"]), roi, cfg.inference,
                                           block, device, transforms):
            q = predictions.quantise(torch.sigmoid(logits).numpy())
            if probs is not None:
                for c, name in enumerate(ontology.atomic):
                    probs[name][core] = q[c]
            writer.write(core, q)
    return writer.finish(block)


def default_transforms(cfg: Config) -> tuple[Transform, ...]:
    """The models' own TTA: inference.tta_flips (identity and each axis flipped), else none."""
    return SINGLE_FLIPS if cfg.inference.tta_flips else IDENTITY


def prediction_device(cfg: Config) -> torch.device:
    """CUDA for a GPU config (train.gpus > 0), else the CPU. A GPU config in a job that sees no
    CUDA device stops: predicting on the CPU instead would take days without a word."""
    if cfg.train.gpus == 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError(
            f"predict: config key 'train.gpus' = {cfg.train.gpus} (GPU prediction) but this job "
            "sees no CUDA device; give the predict rule a GPU (Slurm profile: its gpu "
            "resource) or set train.gpus to 0 to predict on the CPU")
    return torch.device("cuda")


def entry_transforms(cfg: Config, entry: Entry | None) -> tuple[Transform, ...]:
    """A TTA variant's transforms (predict.tta), else the models' own."""
    if entry is None or entry.tta is None:
        return default_transforms(cfg)
    return transforms(entry.tta.flips, entry.tta.rot90, cfg.data.spacing_nm)


def predict_crops(cfg: Config, model: ModelConfig, ckpt: Path, inventory: pd.DataFrame,
                  out: Path, crops: Sequence[str] | None = None,
                  selection: Mapping[str, Any] | None = None, kept: Path | None = None,
                  entry: Entry | None = None) -> dict[str, Any]:
    """Predict the validation crops (or `crops`) into the store `out`; return the manifest.
    With the caching `selection` training used, a crop its store holds on this node is read
    from there instead of its NIfTI. `kept`: a store for the probabilities (data.predictions);
    `entry`: the TTA variant of `model` predicted (its name and transforms)."""
    device = prediction_device(cfg)
    net, info = load_model(model, cfg.classes, ckpt, device)
    rows = inventory_mod.select(inventory, crops, "predict").to_dict("records")
    settings = from_selection(cfg.caching, selection) if selection else None
    tta = entry_transforms(cfg, entry)
    instances, sources, seconds = {}, {}, {}
    with predictions.writing(out) as root, kept_store(kept) as probs:
        for row in rows:
            start = time.perf_counter()
            stored = (stored_volume(settings.strategy, inventory, settings, str(row["crop"]))
                      if settings else None)
            with crop_image(row, out.parent, stored) as (image, source):
                log.info("predicting %s with %s (image from the %s, %d TTA pass(es))",
                         row["crop"], model.name, source, len(tta))
                # the crop's world origin from its NIfTI (converted crops keep the challenge's)
                origin = volume_io.read_header(row["image"]).translation
                instances[row["crop_id"]] = predict_crop(net, row, image, cfg, model.roi_size,
                                                         root, device, origin, tta, probs)
            sources[row["crop_id"]] = source
            seconds[row["crop_id"]] = round(time.perf_counter() - start, 3)
        manifest = {
            "model": entry.name if entry else model.name, "network": model.name,
            "checkpoint": str(ckpt), **info, "device": device.type,
            "crops": [r["crop_id"] for r in rows], "crop_names": [r["crop"] for r in rows],
            "instances": instances, "image_sources": sources, "seconds": seconds,
            "thresholds": cfg.inference.thresholds(cfg.classes.num_channels),
            "classes": cfg.classes.summary(), "tta": [t.name for t in tta],
            "block_size": cfg.inference.block_size, "voxel_size": list(cfg.data.spacing_nm),
            "probabilities": {r["crop_id"]: str(kept) for r in rows} if kept else {}}
        root.attrs.update(manifest)
    return manifest


@contextlib.contextmanager
def kept_store(path: Path | None) -> Iterator[zarr.Group | None]:
    """The probabilities store `path` written alongside a prediction (None: not kept)."""
    if path is None:
        yield None
        return
    with predictions.writing(Path(path)) as root:
        yield root


# Keys a manifest holds per crop: merged, not compared.
LIST_KEYS = ("crops", "crop_names")
DICT_KEYS = ("instances", "image_sources", "seconds", "probabilities", "folds",
             "crop_thresholds", "crop_members")


def merge_manifests(manifests: Mapping[Path, Mapping[str, Any]]) -> dict[str, Any]:
    """One manifest for crops predicted by separate jobs ({path: manifest}, in crop order), the
    same as one run over every crop would write. Crops predicted with another checkpoint or
    other settings (any key that is not per crop) stop with one line naming the manifest that
    differs."""
    if not manifests:
        raise ValueError("merge_manifests: no manifests")
    (first_path, first), *_ = manifests.items()
    # the per-crop keys emptied in place: the keys stay in the order one run writes them
    merged = {**first, **{k: [] for k in LIST_KEYS if k in first},
              **{k: {} for k in DICT_KEYS if k in first}}
    for path, manifest in manifests.items():
        for key in first:
            if key not in LIST_KEYS + DICT_KEYS and manifest.get(key) != first[key]:
                raise InputError(f"{path}: '{key}' is {manifest.get(key)!r} but "
                                 f"{first_path} has {first[key]!r}; predict the crops again")
        for key in LIST_KEYS:
            if key in first:
                merged[key] += manifest.get(key, [])
        for key in DICT_KEYS:
            if key in first:
                merged[key].update(manifest.get(key, {}))
    return merged
