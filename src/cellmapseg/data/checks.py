"""Check every crop's files before anything is trained on them; report all problems at once.

Pass (a) reads only headers (cheap) for every crop: missing or unreadable files, dimensionality,
shape, spacing, label dtype, and image and label affines that disagree (origin or orientation).
Pass (b) then streams the voxels of the crops that passed (a) once, chunk by chunk (data.scan),
for what only the data can show: label values, non-finite intensities, gzip streams that end
early (a truncated .nii.gz still has a readable header) and label voxels of classes the crop
does not list as annotated (a warning, or a problem under data.strict_annotations).
Callers that need statistics anyway (the inventory) pass an `analyse` function that gets the
same scans, so that each file is decompressed only once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from typing import TypeVar

import numpy as np
from nibabel.orientations import aff2axcodes

from cellmapseg.data.datalist import CropEntry, crop_name
from cellmapseg.data.nifti import NiftiHeader
from cellmapseg.data.scan import ImageScan, LabelScan, scan_image, scan_label
from cellmapseg.data.volume_io import read_header
from cellmapseg.errors import InputError

T = TypeVar("T")

FIELDS: tuple[str, ...] = ("image", "label")
# Image and label must share the voxel -> world map: origins within this fraction of a voxel,
# direction cosines within this (they are unit vectors, so it is relative).
ORIGIN_TOLERANCE = 1e-3
DIRECTION_TOLERANCE = 1e-6


@dataclass(frozen=True)
class CropHeaders:
    image: NiftiHeader
    label: NiftiHeader


@dataclass(frozen=True)
class LabelRules:
    """What pass (b) holds labels to: the ontology's label values (anything else is a problem),
    its class names (channel order) and whether unannotated class voxels are a problem."""

    labels: tuple[int, ...]
    names: tuple[str, ...]
    strict: bool = False


# analyse(entry, headers, image scan, label scan) -> per-crop result; runs on crops that passed
# every check.
Analyse = Callable[[CropEntry, CropHeaders, ImageScan, LabelScan], T]


# ---------------------------------------------------------------- pass (a): headers only


def header_problems(
    entry: CropEntry, spacing_nm: Sequence[float], tolerance: float
) -> tuple[list[str], CropHeaders | None]:
    """Problems visible in the headers; the headers themselves when both files are readable."""
    problems: list[str] = []
    headers: dict[str, NiftiHeader] = {}
    for field in FIELDS:
        try:
            headers[field] = read_header(getattr(entry, field))
        except InputError as exc:
            problems.append(f"crop {entry.name}: {field} {exc}")
    for field, header in headers.items():
        problems.extend(_single_header_problems(entry.name, field, header, spacing_nm, tolerance))
    if len(headers) < len(FIELDS):
        return problems, None
    image, label = headers["image"], headers["label"]
    if image.shape3d and label.shape3d and image.shape3d != label.shape3d:
        problems.append(
            f"crop {entry.name}: image/label shape mismatch: image {image.path} is "
            f"{image.shape3d}, label {label.path} is {label.shape3d}"
        )
    problems.extend(affine_problems(entry.name, image, label))
    return problems, CropHeaders(image=image, label=label)


def affine_problems(crop: str, image: NiftiHeader, label: NiftiHeader) -> list[str]:
    """One line when image and label do not map voxels to the same world positions (a label
    shifted or flipped against its image trains on the wrong voxels). Spacing magnitudes are
    the spacing check's; only origin and axis directions are compared here."""
    found = [*_origin_difference(image, label), *_orientation_difference(image, label)]
    if not found:
        return []
    return [f"crop {crop}: image/label affine mismatch: image {image.path} vs label "
            f"{label.path}: {'; '.join(found)}"]


def _origin_difference(image: NiftiHeader, label: NiftiHeader) -> list[str]:
    voxel = float(np.min(np.linalg.norm(label.affine[:3, :3], axis=0)))
    shift = np.abs(np.subtract(image.translation, label.translation))
    if np.all(shift <= ORIGIN_TOLERANCE * voxel):
        return []
    return [f"origin {_vector(image.translation)} vs {_vector(label.translation)} nm"]


def _orientation_difference(image: NiftiHeader, label: NiftiHeader) -> list[str]:
    a, b = _directions(image.affine), _directions(label.affine)
    if np.all(np.abs(a - b) <= DIRECTION_TOLERANCE):
        return []
    codes = _axcodes(image.affine), _axcodes(label.affine)
    if codes[0] != codes[1]:
        return [f"orientation differs (axes {codes[0]} vs {codes[1]})"]
    return [f"orientation differs (direction cosines up to {np.max(np.abs(a - b)):.3g} apart)"]


def _directions(affine: np.ndarray) -> np.ndarray:
    """Unit world direction of each voxel axis (the columns of the 3x3 part)."""
    part = affine[:3, :3]
    norms = np.linalg.norm(part, axis=0)
    return np.divide(part, norms, out=np.zeros_like(part), where=norms > 0)


def _axcodes(affine: np.ndarray) -> str:
    return "".join(code or "?" for code in aff2axcodes(affine))  # None: a zero-length axis


def _vector(values: Sequence[float]) -> str:
    return "[" + ", ".join(np.format_float_positional(v, precision=4, trim="-")
                           for v in values) + "]"


def _single_header_problems(
    crop: str, field: str, header: NiftiHeader, spacing_nm: Sequence[float], tolerance: float
) -> list[str]:
    where = f"crop {crop}: {field} {header.path}"
    if header.shape3d is None:
        return [f"{where}: must be a 3D volume, got {header.ndim}D shape {header.shape}"]
    problems: list[str] = []
    if 0 in header.shape:
        problems.append(f"{where}: empty volume, shape {header.shape}")
    if not _spacing_matches(header.spacing, spacing_nm, tolerance):
        got = tuple(round(s, 6) for s in header.spacing)
        problems.append(
            f"{where}: spacing {got} differs from data.spacing_nm {tuple(spacing_nm)} "
            f"(relative tolerance {tolerance})"
        )
    kinds = "ui" if field == "label" else "uif"
    if header.dtype.kind not in kinds:
        what = "an integer" if field == "label" else "a real-valued"
        problems.append(f"{where}: on-disk dtype {header.dtype} is not {what} type")
    if field == "label" and header.scaled:
        # Scaled labels would come back as float64 and their values would not be class values.
        problems.append(f"{where}: header sets scl_slope/scl_inter; labels must be unscaled")
    return problems


def _spacing_matches(got: Sequence[float], want: Sequence[float], tolerance: float) -> bool:
    return len(got) == len(want) and all(
        abs(g - w) <= tolerance * abs(w) for g, w in zip(got, want, strict=True)
    )


# ---------------------------------------------------------------- pass (b): voxel data


def image_problems(entry: CropEntry, image: ImageScan) -> list[str]:
    if not image.nonfinite:
        return []
    return [f"crop {entry.name}: image {entry.image}: {image.nonfinite} non-finite voxels "
            "(NaN or Inf)"]


def label_problems(entry: CropEntry, label: LabelScan) -> list[str]:
    if not label.bad:
        return []
    bad = sorted(label.bad)
    shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
    return [f"crop {entry.name}: label {entry.label}: values {shown} are not label values of "
            f"the configured classes (0 and {_ranges(label.labels)}; see classes.atomic)"]


def _ranges(values: Sequence[int]) -> str:
    """1,2,3,5 -> "1..3, 5"."""
    out: list[str] = []
    for v in sorted(values):
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in out)


def unannotated_voxels(entry: CropEntry, label: LabelScan, names: Sequence[str]
                       ) -> list[tuple[str, int]]:
    """(class, voxels) of each class with voxels in the label that the crop does not list in
    annotated_classes, channel order; from the scan's counts (no second read)."""
    listed = set(entry.annotated_classes)
    return [(name, int(label.counts[value]))
            for channel, (name, value) in enumerate(zip(names, label.labels, strict=True))
            if channel not in listed and label.counts[value]]


def annotation_findings(entry: CropEntry, label: LabelScan, rules: LabelRules) -> list[str]:
    """The one line for a crop whose label holds classes it does not annotate: the loss masks
    those channels, so these voxels are silently ignored (a wrong annotated_classes?)."""
    found = unannotated_voxels(entry, label, rules.names)
    if not found:
        return []
    listed = ", ".join(f"{name} ({voxels} voxels)" for name, voxels in found)
    why = ("data.strict_annotations is set" if rules.strict else
           "training ignores them; data.strict_annotations makes this an error")
    return [f"crop {entry.name}: label {entry.label}: classes not in annotated_classes "
            f"{entry.annotated_text!r} have voxels: {listed} ({why})"]


def _scan(entry: CropEntry, field: str, labels: tuple[int, ...], problems: list[str]
          ) -> ImageScan | LabelScan | None:
    try:
        if field == "image":
            return scan_image(entry.image)
        return scan_label(entry.label, labels)
    except InputError as exc:
        problems.append(f"crop {entry.name}: {field} {exc}")
        return None


def inspect_crop(
    entry: CropEntry, headers: CropHeaders, rules: LabelRules,
    analyse: Analyse[T] | None = None
) -> tuple[list[str], list[str], T | None]:
    """Pass (b) for one crop that passed (a) -> (problems, warnings, `analyse` result): each
    file streamed once (data.scan); `analyse` gets the scans when the crop is clean."""
    problems: list[str] = []
    warnings: list[str] = []
    image = _scan(entry, "image", rules.labels, problems)
    if image is not None:
        problems.extend(image_problems(entry, image))
    label = _scan(entry, "label", rules.labels, problems)
    if label is not None:
        problems.extend(label_problems(entry, label))
        (problems if rules.strict else warnings).extend(annotation_findings(entry, label, rules))
    if problems or analyse is None or image is None or label is None:
        return problems, warnings, None
    return [], warnings, analyse(entry, headers, image, label)


# ---------------------------------------------------------------- both passes


def crop_warnings(entry: CropEntry) -> list[str]:
    warnings: list[str] = []
    if not entry.annotated_classes:
        warnings.append(f"crop {entry.name}: annotated_classes is empty; it adds no gradient")
    label_name = crop_name(entry.label)
    if label_name is not None and label_name != entry.name:
        warnings.append(
            f"crop {entry.name}: label file name {entry.label.name!r} does not match the crop "
            "name; check that image and label belong together"
        )
    return warnings


def scan_crops(
    entries: Sequence[CropEntry],
    spacing_nm: Sequence[float],
    tolerance: float,
    labels: tuple[int, ...],
    analyse: Analyse[T] | None = None,
    workers: int = 1,
    names: Sequence[str] = (),
    strict: bool = False,
) -> tuple[list[str], list[T | None]]:
    """Both passes over all crops -> (warnings, per-crop `analyse` results in entry order);
    `labels` are the ontology's label values (anything else in a label is a problem), `names`
    its class names (default "label <value>"); `strict` makes voxels of classes a crop does
    not annotate a problem instead of a warning.

    Raises InputError listing every problem, one line each, if any crop fails.
    """
    rules = LabelRules(labels, tuple(names) or tuple(f"label {v}" for v in labels), strict)
    warnings = [w for entry in entries for w in crop_warnings(entry)]
    problems: list[str] = []
    passed: dict[int, CropHeaders] = {}
    for index, entry in enumerate(entries):
        found, headers = header_problems(entry, spacing_nm, tolerance)
        problems.extend(found)
        if not found and headers is not None:
            passed[index] = headers
    results: list[T | None] = [None] * len(entries)
    todo = [(entries[i], headers) for i, headers in passed.items()]
    for index, (found, warned, result) in zip(passed, _map_crops(todo, rules, analyse, workers),
                                              strict=True):
        problems.extend(found)
        warnings.extend(warned)
        results[index] = result
    if problems:
        raise InputError("\n".join(problems))
    return warnings, results


def _map_crops(
    todo: list[tuple[CropEntry, CropHeaders]], rules: LabelRules,
    analyse: Analyse[T] | None, workers: int
) -> Iterator[tuple[list[str], list[str], T | None]]:
    """inspect_crop over the crops, in order; `workers` crops at a time when workers > 1.

    Threads, not processes: the work is zlib inflation and numpy reductions, which release the
    GIL. A spawn pool re-executes the caller's __main__, which breaks unguarded Snakemake
    scripts (BrokenProcessPool), and fork is unsafe once numpy/torch have started threads.
    Each thread holds one crop, so memory stays bounded by `workers` crops.
    """
    entries = [entry for entry, _ in todo]
    headers = [h for _, h in todo]
    if workers <= 1 or len(todo) <= 1:
        yield from map(inspect_crop, entries, headers, repeat(rules), repeat(analyse))
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
        yield from pool.map(inspect_crop, entries, headers, repeat(rules), repeat(analyse))


def validate_crops(
    entries: Sequence[CropEntry], spacing_nm: Sequence[float], tolerance: float,
    labels: tuple[int, ...]
) -> list[str]:
    """Check all crops; return warnings, or raise InputError naming every problem."""
    warnings, _ = scan_crops(entries, spacing_nm, tolerance, labels)
    return warnings
