"""Predict the crops of a test manifest (the challenge's test crops, whose ground truth stays on
the server) from their datasets' EM, into a predictions store the submission packs.

A test crop's region is the world box that holds every class grid the manifest lists for it.
Prediction reads the EM at the model's voxel size over the EM voxels that box overlaps, plus
half a window of context on each side where the EM has it: a window centred on the region's
edge then sees real EM, not padding. The store's arrays cover that read box and carry its
voxel size and translation, so the packer brings each class to its grid by the official rules
(which cut the context away). Every crop is located and checked (dataset present, EM level at
the voxel size, region inside the EM) before any is predicted; each problem is one line.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellmapseg.blockwise import ScratchArray
from cellmapseg.config import Config, Entry, ModelConfig
from cellmapseg.data import predictions
from cellmapseg.data.manifest import ManifestRow, by_crop, region
from cellmapseg.data.ngff import Level
from cellmapseg.data.scan import ImageScan
from cellmapseg.data.zarr_crops import EMLevel, open_dataset, open_em, read_em_region
from cellmapseg.errors import InputError
from cellmapseg.predict.crops import (
    entry_transforms,
    kept_store,
    load_model,
    predict_crop,
    prediction_device,
)

log = logging.getLogger(__name__)
SLAB_VOXELS = 1 << 24
Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class TestCrop:
    crop_id: str
    dataset: str
    classes: tuple[str, ...]  # what the manifest scores
    em: EMLevel
    box: Box  # EM voxels read: the region plus context

    @property
    def translation(self) -> tuple[float, float, float]:
        start = np.array([s.start for s in self.box])
        t = np.asarray(self.em.level.translation) + start * np.asarray(self.em.level.voxel_size)
        return tuple(float(v) for v in t)  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.box)  # type: ignore[return-value]


def _nm(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def read_box(start: np.ndarray, stop: np.ndarray, level: Level, context: Sequence[int],
             where: str) -> Box:
    """The level's voxels that overlap [start, stop) nm, widened by `context` voxels per side
    within the level. InputError when the box reaches outside the level."""
    vs = np.asarray(level.voxel_size)
    tol = 0.01  # voxels: the challenge rounds coordinates to 0.01 nm
    lo = np.floor((start - level.start) / vs + tol).astype(np.int64)
    hi = np.ceil((stop - level.start) / vs - tol).astype(np.int64)
    if (lo < 0).any() or (hi > np.asarray(level.shape)).any():
        raise InputError(f"{where}: the region {_nm(start)}-{_nm(stop)} nm reaches outside the "
                         f"EM {level.path} ({level.extent})")
    lo = np.maximum(lo - np.asarray(context), 0)
    hi = np.minimum(hi + np.asarray(context), np.asarray(level.shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore


def locate(root: str | Path, rows: Sequence[ManifestRow], voxel_size: Sequence[float],
           context: Sequence[int]) -> list[TestCrop]:
    """Every test crop of the manifest rows, checked; one line per bad crop."""
    crops, problems = [], []
    for crop_id, crop_rows in by_crop(rows).items():
        dataset = crop_rows[0].dataset
        try:
            em = open_em(open_dataset(root, dataset), dataset, voxel_size)
            start, stop = region(crop_rows)
            box = read_box(start, stop, em.level, context, f"dataset {dataset} {crop_id}")
        except InputError as exc:
            problems.append(str(exc))
            continue
        crops.append(TestCrop(crop_id, dataset, tuple(r.class_label for r in crop_rows), em,
                              box))
    if problems:
        raise InputError("\n".join(problems))
    if not crops:
        raise InputError("test manifest: no crops")
    return crops


def read_image(crop: TestCrop, scratch: Path) -> tuple[ScratchArray, ImageScan]:
    """The crop's EM box into a scratch array a z-slab at a time, with its statistics."""
    image = ScratchArray(scratch, crop.shape, crop.em.array.dtype)
    scan = ImageScan()
    step = max(1, SLAB_VOXELS // (crop.shape[1] * crop.shape[2]))
    z0 = crop.box[0].start
    for z in range(0, crop.shape[0], step):
        zs = slice(z, min(z + step, crop.shape[0]))
        slab = read_em_region(crop.em.array, (slice(z0 + zs.start, z0 + zs.stop),
                                              *crop.box[1:]), crop.em.where)
        image[zs] = slab
        scan.add(slab.ravel())
    return image, scan


def predict_test_crops(cfg: Config, model: ModelConfig, ckpt: Path, root: str | Path,
                       rows: Sequence[ManifestRow], out: Path, kept: Path | None = None,
                       entry: Entry | None = None) -> dict[str, Any]:
    """Predict every crop of the test manifest `rows` into the store `out` (probabilities into
    `kept` when given; `entry`: the TTA variant predicted); the manifest."""
    context = [r // 2 for r in model.roi_size]
    crops = locate(root, rows, cfg.data.spacing_nm, context)
    device = prediction_device(cfg)
    net, info = load_model(model, cfg.classes, ckpt, device)
    tta = entry_transforms(cfg, entry)
    instances, boxes = {}, {}
    with predictions.writing(out) as store, kept_store(kept) as probs:
        for crop in crops:
            with tempfile.TemporaryDirectory(prefix=".test-", dir=out.parent) as tmp:
                image, scan = read_image(crop, Path(tmp) / "image.npy")
                row = {"crop": f"{crop.dataset}_{crop.crop_id}", "crop_id": crop.crop_id,
                       "d": crop.shape[0], "h": crop.shape[1], "w": crop.shape[2],
                       "image_mean": scan.mean, "image_std": scan.std}
                log.info("predicting test %s of %s (%s voxels) with %s", crop.crop_id,
                         crop.dataset, "x".join(map(str, crop.shape)), model.name)
                instances[crop.crop_id] = predict_crop(net, row, image, cfg, model.roi_size,
                                                       store, device, crop.translation, tta,
                                                       probs)
            boxes[crop.crop_id] = {"dataset": crop.dataset, "em": crop.em.where,
                                   "box": [[s.start, s.stop] for s in crop.box],
                                   "translation": list(crop.translation),
                                   "classes": list(crop.classes)}
        manifest = {"model": entry.name if entry else model.name, "network": model.name,
                    "checkpoint": str(ckpt), **info,
                    "device": device.type, "crops": [c.crop_id for c in crops],
                    "test_crops": boxes, "instances": instances,
                    "thresholds": cfg.inference.thresholds(cfg.classes.num_channels),
                    "classes": cfg.classes.summary(), "tta": [t.name for t in tta],
                    "block_size": cfg.inference.block_size,
                    "voxel_size": list(cfg.data.spacing_nm),
                    "probabilities": ({c.crop_id: str(kept) for c in crops} if kept
                                      else {})}
        store.attrs.update(manifest)
    return manifest
