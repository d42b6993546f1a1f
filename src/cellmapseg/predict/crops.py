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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr

from cellmapseg.blockwise import label_block, merge
from cellmapseg.classes import Ontology
from cellmapseg.config import Config, ModelConfig
from cellmapseg.data import inventory as inventory_mod
from cellmapseg.data import predictions, volume_io
from cellmapseg.data.caching import from_selection, stored_volume
from cellmapseg.data.volumes import Volume
from cellmapseg.errors import InputError
from cellmapseg.models import checkpoint
from cellmapseg.models.net import Net
from cellmapseg.predict.blocks import predict_blocks
from cellmapseg.predict.window import binarise

log = logging.getLogger(__name__)
FLIPS = ((), (0,), (1,), (2,))


def load_model(model: ModelConfig, ontology: Ontology, path: Path, device: torch.device
               ) -> tuple[Net, dict]:
    state = checkpoint.load(path, model.name,
                            checkpoint.identity(model.network.as_dict(), ontology.atomic))
    net = Net(model, ontology)
    net.load_state_dict(state["model"])
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
                 translation: Sequence[float] = (0.0, 0.0, 0.0)) -> dict[str, int]:
    """Predict one crop's `image` (any array read a region at a time) into `root`, its first
    voxel's centre at `translation` (nm); return the number of instances per instance
    class."""
    if tuple(image.shape) != (int(row["d"]), int(row["h"]), int(row["w"])):
        raise InputError(f"crop {row['crop']}: image shape {image.shape} differs from the "
                         "inventory")
    ontology = cfg.classes
    arrays = predictions.create_crop(root, row["crop_id"], image.shape, cfg.data.spacing_nm,
                                     ontology, translation)
    counts = {name: 0 for name in ontology.names if ontology.is_instance(name)}
    block = [cfg.inference.block_size] * 3
    flips = FLIPS if cfg.inference.tta_flips else ((),)
    thresholds = cfg.inference.thresholds(ontology.num_channels)
    with torch.no_grad():
        for core, logits in predict_blocks(net.predict, image, float(row["image_mean"]),
                                           float(row["image_std"]), roi, cfg.inference,
                                           block, device, flips):
            binary = binarise(logits[None], thresholds)[0].numpy()
            for name, mask in class_masks(binary, ontology):
                if name in counts:
                    arrays[name][core], n = label_block(mask, counts[name])
                    counts[name] += n
                else:
                    arrays[name][core] = mask.astype(np.uint8)
    return {name: merge(arrays[name], block, counts[name]) for name in counts}


def class_masks(binary: np.ndarray, ontology: Ontology) -> Iterator[tuple[str, np.ndarray]]:
    """(class, bool mask) of every class from a block's thresholded atomic channels: an atomic
    class is its channel, a group the union (OR) of its members' channels."""
    for name in ontology.names:
        members = ontology.members(name)
        yield name, (binary[members[0]] if len(members) == 1
                     else np.logical_or.reduce(binary[list(members)], axis=0))


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


def predict_crops(cfg: Config, model: ModelConfig, ckpt: Path, inventory: pd.DataFrame,
                  out: Path, crops: Sequence[str] | None = None,
                  selection: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Predict the validation crops (or `crops`) into the store `out`; return the manifest.
    With the caching `selection` training used, a crop its store holds on this node is read
    from there instead of its NIfTI."""
    device = prediction_device(cfg)
    net, info = load_model(model, cfg.classes, ckpt, device)
    rows = inventory_mod.select(inventory, crops, "predict").to_dict("records")
    settings = from_selection(cfg.caching, selection) if selection else None
    instances, sources = {}, {}
    with predictions.writing(out) as root:
        for row in rows:
            stored = (stored_volume(settings.strategy, inventory, settings, str(row["crop"]))
                      if settings else None)
            with crop_image(row, out.parent, stored) as (image, source):
                log.info("predicting %s with %s (image from the %s)", row["crop"], model.name,
                         source)
                # the crop's world origin from its NIfTI (converted crops keep the challenge's)
                origin = volume_io.read_header(row["image"]).translation
                instances[row["crop_id"]] = predict_crop(net, row, image, cfg, model.roi_size,
                                                         root, device, origin)
            sources[row["crop_id"]] = source
        manifest = {
            "model": model.name, "checkpoint": str(ckpt), **info, "device": device.type,
            "crops": [r["crop_id"] for r in rows], "crop_names": [r["crop"] for r in rows],
            "instances": instances, "image_sources": sources,
            "thresholds": cfg.inference.thresholds(cfg.classes.num_channels),
            "classes": cfg.classes.summary(),
            "tta_flips": cfg.inference.tta_flips, "block_size": cfg.inference.block_size,
            "voxel_size": list(cfg.data.spacing_nm)}
        root.attrs.update(manifest)
    return manifest


SHARED_KEYS = ("model", "checkpoint", "epoch", "step", "best_score", "device", "thresholds",
               "tta_flips", "block_size", "voxel_size", "classes")


def merge_manifests(manifests: Mapping[Path, Mapping[str, Any]]) -> dict[str, Any]:
    """One manifest for crops predicted by separate jobs ({path: manifest}, in crop order), the
    same as one run over every crop would write. Crops predicted with another checkpoint or
    other settings stop with one line naming the manifest that differs."""
    if not manifests:
        raise ValueError("merge_manifests: no manifests")
    (first_path, first), *_ = manifests.items()
    # the per-crop keys emptied in place: the keys stay in the order one run writes them
    merged = {**first, "crops": [], "crop_names": [], "instances": {}, "image_sources": {}}
    for path, manifest in manifests.items():
        for key in SHARED_KEYS:
            if manifest.get(key) != first[key]:
                raise InputError(f"{path}: '{key}' is {manifest.get(key)!r} but "
                                 f"{first_path} has {first[key]!r}; predict the crops again")
        merged["crops"] += manifest["crops"]
        merged["crop_names"] += manifest["crop_names"]
        merged["instances"].update(manifest["instances"])
        merged["image_sources"].update(manifest["image_sources"])
    return merged
