"""Embedded synthetic CellMap-like dataset: EM-looking crops with 14-class organelle labels.

Lets the whole pipeline run (and a small 3D CNN learn something) on a machine without the real
data. Geometry follows the biology: cells in extracellular space, a plasma membrane shell, a
nucleus, and organelles with membrane/lumen pairs in the cytoplasm. Each crop is generated from
its own random stream seeded by (seed, crop index), so it does not depend on any other crop.
Like the real data, each crop annotates a subset of the classes and the label of every
unannotated class is zeroed; exactly one training crop annotates nothing (cf. crop380).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from cellmapseg.atomic import atomic_path, write_json
from cellmapseg.classes import CLASS_NAMES, NUM_CLASSES
from cellmapseg.config import SyntheticConfig
from cellmapseg.synthetic.geometry import paint_label
from cellmapseg.synthetic.plan import TAG_CROP, CropPlan, mask_unannotated, plan_crops, stream
from cellmapseg.synthetic.render import Appearance, appearances, render

_GZIP_LEVEL = 1  # noisy float images barely compress; favour speed


def generate(cfg: SyntheticConfig, spacing_nm: tuple[float, float, float], out_dir: Path) -> Path:
    """Write images/, labels/ and datalist.json under out_dir; return the datalist path."""
    out_dir = Path(out_dir).resolve()
    looks = appearances(cfg)
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for plan in plan_crops(cfg):
        image, label = synthesize_crop(cfg, plan, looks[plan.dataset])
        image_path = out_dir / "images" / f"{plan.stem}_0000.nii.gz"
        label_path = out_dir / "labels" / f"{plan.stem}.nii.gz"
        _write_nifti(image_path, image, spacing_nm)
        _write_nifti(label_path, mask_unannotated(label, plan.annotated), spacing_nm)
        entries[plan.split].append({
            "image": str(image_path),
            "label": str(label_path),
            "annotated_classes": ",".join(map(str, sorted(plan.annotated))),
        })
    datalist = {
        "name": "cellmapseg-synthetic",
        "description": f"Synthetic CellMap-like FIB-SEM crops (seed {cfg.seed})",
        "modality": "EM",
        "sigmoid": True,
        "num_classes": NUM_CLASSES,
        "class_names": [{"name": n, "index": [i + 1]} for i, n in enumerate(CLASS_NAMES)],
        **entries,
    }
    path = out_dir / "datalist.json"
    write_json(path, datalist)  # last: its presence marks a complete dataset
    return path


def synthesize_crop(
    cfg: SyntheticConfig, plan: CropPlan, look: Appearance
) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, full label uint8) of one crop; unannotated classes are not yet zeroed."""
    rng = stream(cfg, TAG_CROP, plan.index)
    names = {CLASS_NAMES[c] for c in plan.annotated}
    label = paint_label(rng, plan.shape, float(np.mean(cfg.shape)), names)
    return render(rng, label, look), label


def _write_nifti(path: Path, array: np.ndarray, spacing_nm: tuple[float, float, float]) -> None:
    """Gzipped NIfTI with zooms = spacing; written as bytes (fixed mtime, no name) atomically."""
    nifti = nib.Nifti1Image(array, np.diag([*map(float, spacing_nm), 1.0]))
    data = gzip.compress(nifti.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
