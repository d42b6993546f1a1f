"""Embedded synthetic CellMap-like dataset: EM-looking crops with organelle labels of any
class ontology (the spec's 14 classes by default; others as round bodies, see geometry).

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
from cellmapseg.classes import Ontology
from cellmapseg.config import SyntheticConfig
from cellmapseg.synthetic.geometry import KINDS, paint_label
from cellmapseg.synthetic.plan import TAG_CROP, CropPlan, mask_unannotated, plan_crops, stream
from cellmapseg.synthetic.render import Appearance, appearances, render

_GZIP_LEVEL = 1  # noisy float images barely compress; favour speed
PADDED_PLANES = 3  # black planes of every third crop (data.padding_mask)


def generate(cfg: SyntheticConfig, spacing_nm: tuple[float, float, float], out_dir: Path,
             ontology: Ontology) -> Path:
    """Write images/, labels/ and datalist.json under out_dir; return the datalist path."""
    out_dir = Path(out_dir).resolve()
    looks = appearances(cfg)
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for plan in plan_crops(cfg, ontology):
        image, label = synthesize_crop(cfg, plan, looks[plan.dataset], ontology)
        if plan.index % 3 == 1:  # black planes at one face, as a converted crop's border has
            image[..., :PADDED_PLANES] = 0
        image_path = out_dir / "images" / f"{plan.stem}_0000.nii.gz"
        label_path = out_dir / "labels" / f"{plan.stem}.nii.gz"
        _write_nifti(image_path, image, spacing_nm)
        _write_nifti(label_path, mask_unannotated(label, plan.annotated, ontology), spacing_nm)
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
        "num_classes": ontology.num_channels,
        "class_names": [{"name": n, "index": [v]}
                        for n, v in zip(ontology.atomic, ontology.labels, strict=True)],
        **entries,
    }
    path = out_dir / "datalist.json"
    write_json(path, datalist)  # last: its presence marks a complete dataset
    return path


def synthesize_crop(
    cfg: SyntheticConfig, plan: CropPlan, look: Appearance, ontology: Ontology
) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, full label uint8 of the ontology's label values) of one crop;
    unannotated classes are not yet zeroed. A kind the ontology lacks is painted (the image
    shows it) but labelled 0, as an unannotated class would be."""
    rng = stream(cfg, TAG_CROP, plan.index)
    names = {ontology.atomic[c] for c in plan.annotated}
    others = [c for c, n in enumerate(ontology.atomic) if n not in KINDS]
    extras = [(len(KINDS) + 1 + k, c in plan.annotated) for k, c in enumerate(others)]
    internal = paint_label(rng, plan.shape, float(np.mean(cfg.shape)), names, extras)
    table = np.zeros(len(KINDS) + 1 + len(others), np.uint8)
    for c, name in enumerate(ontology.atomic):
        value = KINDS.index(name) + 1 if name in KINDS else len(KINDS) + 1 + others.index(c)
        table[value] = ontology.labels[c]
    return render(rng, internal, look), table[internal]


def _write_nifti(path: Path, array: np.ndarray, spacing_nm: tuple[float, float, float]) -> None:
    """Gzipped NIfTI with zooms = spacing; written as bytes (fixed mtime, no name) atomically."""
    nifti = nib.Nifti1Image(array, np.diag([*map(float, spacing_nm), 1.0]))
    data = gzip.compress(nifti.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
