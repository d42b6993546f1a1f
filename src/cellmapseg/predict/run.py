"""Predict crops with a trained model into Zarr (`{crop_id}/{class}`), in bounded memory.

The image is first streamed from its NIfTI into a Fortran-ordered .npy beside the output (NIfTI
stores x fastest, so slabs along the last axis are contiguous on both sides); blocks are then
read from it one region at a time. Semantic classes become uint8 0/1 masks; instance classes
(`nuc`) become uint32 connected-component ids (26-connectivity), labelled block by block and
merged. The store is written under a temporary name and renamed when every crop is done.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import zarr

from cellmapseg.classes import CLASS_NAMES, INSTANCE_CLASSES
from cellmapseg.config import Config
from cellmapseg.data import nifti
from cellmapseg.errors import InputError
from cellmapseg.inference import binarise
from cellmapseg.models.net import Net
from cellmapseg.predict.blocks import predict_blocks
from cellmapseg.predict.instances import label_block, merge
from cellmapseg.train import checkpoint

log = logging.getLogger(__name__)
SLAB_BYTES = 256 * 2**20
CHUNK = 64
FLIPS = ((), (0,), (1,), (2,))


class NpyRegions:
    """Region reads from an .npy file, mapping it only for the duration of one read (so the
    process never keeps more than one region's pages)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        head = np.load(path, mmap_mode="r")
        self.shape, self.dtype = head.shape, head.dtype
        del head

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        mapped = np.load(self.path, mmap_mode="r")
        try:
            return np.array(mapped[key])
        finally:
            del mapped


def stream_image(path: str | Path, dtype: np.dtype, dest: Path) -> NpyRegions:
    """Copy a NIfTI image into `dest` (.npy, compact dtype) slab by slab."""
    header = nifti.read_header(path)
    shape = header.shape3d
    if shape is None:
        raise InputError(f"{path}: expected a 3D image, got shape {header.shape}")
    proxy = nib.load(path).dataobj
    out = np.lib.format.open_memmap(dest, mode="w+", dtype=dtype, shape=shape, fortran_order=True)
    step = max(1, SLAB_BYTES // (shape[0] * shape[1] * 4))
    try:
        for z in range(0, shape[2], step):
            slab = np.asarray(proxy[:, :, z:z + step] if len(header.shape) == 3
                              else proxy[:, :, z:z + step, 0])
            out[:, :, z:z + step] = slab.astype(dtype, copy=False)
    except (EOFError, OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the image data ({exc})") from exc
    out.flush()
    del out
    return NpyRegions(dest)


def select_rows(inventory: pd.DataFrame, crops: Sequence[str] | None) -> pd.DataFrame:
    """The validation crops by default, else the named ones (crop name or crop id)."""
    if not crops:
        return inventory[inventory["split"] == "validation"]
    known = set(inventory["crop"]) | set(inventory["crop_id"])
    missing = [c for c in crops if c not in known]
    if missing:
        raise InputError(f"predict: crops not in the inventory: {', '.join(missing)}")
    return inventory[inventory["crop"].isin(crops) | inventory["crop_id"].isin(crops)]


def load_model(cfg: Config, name: str, path: Path, device: torch.device) -> tuple[Net, dict]:
    state = checkpoint.load(path, name, cfg.raw["models"][name]["network"])
    net = Net(name, cfg.model(name))
    net.load_state_dict(state["model"])
    return net.to(device).eval(), {"epoch": int(state["epoch"]), "step": int(state["step"]),
                                   "best_score": float(state["best_score"])}


def _arrays(group: Any, shape: tuple[int, ...], spacing: Sequence[float]) -> dict[str, Any]:  # noqa: ANN401
    chunks = tuple(min(CHUNK, n) for n in shape)
    arrays = {}
    for name in CLASS_NAMES:
        dtype = np.uint32 if name in INSTANCE_CLASSES else np.uint8
        arr = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        arr.attrs.update({"voxel_size": list(map(float, spacing)), "translation": [0.0] * 3})
        arrays[name] = arr
    return arrays


def predict_crop(net: Net, row: dict[str, Any], cfg: Config, roi: Sequence[int], group: Any,  # noqa: ANN401
                 scratch: Path, device: torch.device) -> dict[str, int]:
    image = stream_image(row["image"], np.dtype(row["compact_image_dtype"]),
                         scratch / f".{row['crop_id']}.npy")
    try:
        if tuple(image.shape) != (int(row["d"]), int(row["h"]), int(row["w"])):
            raise InputError(f"crop {row['crop']}: image shape {image.shape} differs from the "
                             "inventory")
        arrays = _arrays(group, image.shape, cfg.data.spacing_nm)
        counts = dict.fromkeys(INSTANCE_CLASSES, 0)
        block = [cfg.inference.block_size] * 3
        flips = FLIPS if cfg.inference.tta_flips else ((),)
        with torch.no_grad():
            for core, logits in predict_blocks(net.predict, image, float(row["image_mean"]),
                                               float(row["image_std"]), roi, cfg.inference,
                                               block, device, flips):
                binary = binarise(logits[None], cfg.inference.thresholds())[0].numpy()
                for c, name in enumerate(CLASS_NAMES):
                    if name in counts:
                        arrays[name][core], n = label_block(binary[c], counts[name])
                        counts[name] += n
                    else:
                        arrays[name][core] = binary[c].astype(np.uint8)
        return {name: merge(arrays[name], block, counts[name]) for name in counts}
    finally:
        image.path.unlink(missing_ok=True)


def predict_crops(cfg: Config, name: str, ckpt: Path, inventory: pd.DataFrame, out: Path,
                  crops: Sequence[str] | None = None) -> dict[str, Any]:
    device = torch.device("cuda" if cfg.train.gpus > 0 and torch.cuda.is_available() else "cpu")
    net, info = load_model(cfg, name, ckpt, device)
    rows = select_rows(inventory, crops).to_dict("records")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    instances = {}
    for row in rows:
        log.info("predicting %s with %s", row["crop"], name)
        instances[row["crop_id"]] = predict_crop(net, row, cfg, cfg.model(name).roi_size,
                                                 root.create_group(row["crop_id"]), out.parent,
                                                 device)
    manifest = {"model": name, "checkpoint": str(ckpt), **info, "device": device.type,
                "crops": [r["crop_id"] for r in rows], "crop_names": [r["crop"] for r in rows],
                "instances": instances, "thresholds": cfg.inference.thresholds(),
                "tta_flips": cfg.inference.tta_flips, "block_size": cfg.inference.block_size,
                "voxel_size": list(cfg.data.spacing_nm)}
    root.attrs.update(manifest)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest
