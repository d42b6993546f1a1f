"""The challenge's Zarr crops as the spec's NIfTI crops and datalist (the `convert` command, and
the first stage of the Zarr route).

Each crop of a train manifest is read by `zarr_crops` at the training voxel size: its EM cut by
the crop's box (no other chunk is read), its label brought to that grid by zarr_crops' stated
rule, its annotated classes from the crop's metadata. Every crop is planned (metadata only)
before any file is written, so a bad manifest row, a missing dataset, a crop outside its EM or a
mis-laid crop gives one line each and writes nothing. Voxels go to disk a z-slab at a time
through scratch arrays: a crop costs no more memory than one slab and nibabel's write buffer.
The NIfTI affine carries the crop's voxel size and world translation (first voxel's centre, z y
x on the array axes), so predictions of the converted crops keep the challenge's coordinates.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from cellmapseg.atomic import atomic_path, write_json
from cellmapseg.blockwise import ScratchArray
from cellmapseg.classes import Ontology
from cellmapseg.data import zcrop
from cellmapseg.data.manifest import ManifestRow, by_crop, read_manifest
from cellmapseg.data.zarr_crops import (
    CropPlan,
    crop_affine,
    plan_crop,
    read_em_region,
    read_label,
)
from cellmapseg.errors import InputError

log = logging.getLogger(__name__)
SLAB_VOXELS = 1 << 24  # EM voxels read per slab


@dataclass(frozen=True)
class Planned:
    plan: CropPlan
    split: str  # "training" or "validation"

    def paths(self, out_dir: Path, nifti: bool = True) -> tuple[Path, Path]:
        """(image, label) paths in the datalist's naming: NIfTI files, or Zarr crop
        references (data.zcrop)."""
        if not nifti:
            return zcrop.ref_paths(out_dir / "crops", self.plan.dataset, self.plan.crop)
        stem = f"{self.plan.dataset}_{self.plan.crop}"
        return out_dir / "images" / f"{stem}_0000.nii.gz", out_dir / "labels" / f"{stem}.nii.gz"


def validation_ids(crop_ids: Sequence[str], chosen: Sequence[int | str]) -> set[str]:
    """The crop ids held out: those named (numbers or crop<N>), else every fifth in manifest
    order (at least one). A named crop the manifest lacks is an InputError."""
    if not chosen:
        return {c for i, c in enumerate(crop_ids) if i % 5 == 4} or {crop_ids[-1]}
    named = {c if str(c).startswith("crop") else f"crop{c}" for c in map(str, chosen)}
    missing = sorted(named - set(crop_ids))
    if missing:
        raise InputError(f"config: key 'data.zarr.validation_crops' names {', '.join(missing)}, "
                         "not in the train manifest")
    return named


def plan_all(root: str | Path, rows: Sequence[ManifestRow], ontology: Ontology,
             voxel_size: Sequence[float], validation: Sequence[int | str] = ()
             ) -> list[Planned]:
    """Every crop's plan; InputError with one line per bad crop."""
    crops = by_crop(rows)
    if not crops:
        raise InputError("crop manifest: no crops")
    held_out = validation_ids(list(crops), validation)
    plans, problems = [], []
    for crop_id, crop_rows in crops.items():
        try:
            plan = plan_crop(root, crop_rows[0].dataset, crop_id, ontology, voxel_size)
        except InputError as exc:
            problems.append(str(exc))
            continue
        plans.append(Planned(plan, "validation" if crop_id in held_out else "training"))
    if problems:
        raise InputError("\n".join(problems))
    return plans


def _slabs(shape: Sequence[int]) -> list[slice]:
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    return [slice(z, min(z + step, shape[0])) for z in range(0, shape[0], step)]


def _write_nifti(path: Path, scratch: ScratchArray, matrix: np.ndarray) -> None:
    data = np.load(scratch.path, mmap_mode="r")  # nibabel streams it, gzip level 1
    try:
        with atomic_path(path) as tmp:
            named = Path(f"{tmp}.nii.gz")  # nibabel compresses by the file name
            try:
                nib.save(nib.Nifti1Image(data, matrix), named)
                named.replace(tmp)
            finally:
                named.unlink(missing_ok=True)
    finally:
        del data


def write_crop(planned: Planned, out_dir: Path, scratch: Path) -> dict[str, str]:
    """The crop's image and label NIfTI; its datalist entry."""
    plan = planned.plan
    shape = plan.geometry.shape
    image_path, label_path = planned.paths(out_dir)
    image = ScratchArray(scratch / "image.npy", shape, plan.em.dtype, fortran_order=True)
    for zs in _slabs(shape):
        box = (slice(plan.box[0].start + zs.start, plan.box[0].start + zs.stop), *plan.box[1:])
        image[zs] = read_em_region(plan.em, box, plan.em_where)
    _write_nifti(image_path, image, crop_affine(plan))
    label = ScratchArray(scratch / "label.npy", shape, plan.label_dtype, fortran_order=True)
    read_label(plan, out=label)
    _write_nifti(label_path, label, crop_affine(plan))
    return {"image": str(image_path), "label": str(label_path),
            "annotated_classes": ",".join(map(str, sorted(plan.annotated)))}


def write_refs(planned: Planned, out_dir: Path, root: str | Path, voxel_size: Sequence[float],
               ontology: Ontology) -> dict[str, str]:
    """The crop's two Zarr crop references (no voxel read); its datalist entry."""
    plan = planned.plan
    image, label = zcrop.write_refs(out_dir / "crops", root, plan.dataset, plan.crop,
                                    voxel_size, ontology)
    return {"image": str(image), "label": str(label),
            "annotated_classes": ",".join(map(str, sorted(plan.annotated)))}


def convert(root: str | Path, manifest: str | Path, ontology: Ontology,
            voxel_size: Sequence[float], datalist: str | Path,
            validation: Sequence[int | str] = (), nifti: bool = True) -> Path:
    """Write `datalist` (last) and, beside it, images/ and labels/ (NIfTI copies), or with
    `nifti=False` crops/ (references: every stage then reads the Zarr in place); return the
    datalist path."""
    datalist = Path(datalist).resolve()
    out_dir = datalist.parent
    plans = plan_all(root, read_manifest(manifest), ontology, voxel_size, validation)
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    out_dir.mkdir(parents=True, exist_ok=True)
    datalist.unlink(missing_ok=True)  # the old datalist must not describe half-new crops
    written: list[Path] = []
    try:
        for planned in plans:
            written += planned.paths(out_dir, nifti)
            if not nifti:
                entries[planned.split].append(
                    write_refs(planned, out_dir, root, voxel_size, ontology))
                continue
            with tempfile.TemporaryDirectory(prefix=".convert-", dir=out_dir) as tmp:
                entries[planned.split].append(write_crop(planned, out_dir, Path(tmp)))
            for name, why in planned.plan.skipped:
                log.info("%s %s: class %s held but not annotated (%s)", planned.plan.dataset,
                         planned.plan.crop, name, why)
            log.info("converted %s %s (%s)", planned.plan.dataset, planned.plan.crop,
                     planned.split)
    except BaseException:
        # a damaged chunk shows only when its voxels are read: leave nothing of this run
        for path in written:
            path.unlink(missing_ok=True)
        raise
    write_json(datalist, {
        "name": "cellmapseg-zarr",
        "description": f"CellMap crops of {manifest} from {root} at {list(voxel_size)} nm",
        "modality": "EM",
        "sigmoid": True,
        "num_classes": ontology.num_channels,
        "class_names": [{"name": n, "index": [v]}
                        for n, v in zip(ontology.atomic, ontology.labels, strict=True)],
        **entries,
    })
    return datalist
