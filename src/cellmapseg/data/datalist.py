"""MONAI-style datalist.json (spec §3.6) -> validated, resolved `CropEntry`s.

Only the structure is checked here (keys, types, names, paths); the files themselves are checked
by `cellmapseg.data.checks`. Every structural problem is collected so that one run reports
them all, one line each, naming the datalist, the split/index or crop, and the field.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellmapseg.errors import InputError

SPLITS: tuple[str, ...] = ("training", "validation")
REQUIRED_FIELDS: tuple[str, ...] = ("image", "label", "annotated_classes")
IMAGE_SUFFIXES: tuple[str, ...] = ("_0000.nii.gz", "_0000.nii", ".nii.gz", ".nii",
                                   "_0000.zcrop")  # the last: data.zcrop references
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class CropEntry:
    name: str  # image file name without "_0000.nii.gz", e.g. jrc_cos7-1a_crop234
    dataset: str  # part before the last "_crop", e.g. jrc_cos7-1a
    crop_id: str  # e.g. crop234
    split: str  # "training" or "validation"
    image: Path
    label: Path
    annotated_classes: tuple[int, ...]  # 0-indexed channels annotated in this crop

    def annotation_mask(self, channels: int) -> np.ndarray:
        """(channels,) float32: 1 for channels annotated in this crop, 0 for the rest."""
        mask = np.zeros(channels, dtype=np.float32)
        mask[list(self.annotated_classes)] = 1.0
        return mask

    @property
    def annotated_text(self) -> str:
        return ",".join(map(str, self.annotated_classes))


def parse_annotated_classes(text: str, where: str, channels: int) -> tuple[int, ...]:
    """"0,1,2,3,7,8" -> (0, 1, 2, 3, 7, 8); "" -> (). Raises InputError, one line per problem."""
    if not isinstance(text, str):
        raise InputError(
            f"{where}: must be a string of comma-separated class indices like \"0,1,7\", "
            f"got {type(text).__name__} {text!r}"
        )
    if not text.strip():
        return ()
    problems: list[str] = []
    seen: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        if not _INT.fullmatch(token):
            problems.append(f"{where}: {token!r} is not an integer class index")
            continue
        value = int(token)
        if not 0 <= value < channels:
            problems.append(f"{where}: class index {value} is outside 0..{channels - 1} "
                            f"(classes.atomic has {channels} classes)")
        elif value in seen:
            problems.append(f"{where}: class index {value} is listed more than once")
        else:
            seen.append(value)
    if problems:
        raise InputError("\n".join(problems))
    return tuple(seen)


def crop_name(image: Path) -> str | None:
    """Crop name from an image path, or None if the file name is not a NIfTI name."""
    for suffix in IMAGE_SUFFIXES:
        if image.name.endswith(suffix) and len(image.name) > len(suffix):
            return image.name[: -len(suffix)]
    return None


def split_crop_name(name: str) -> tuple[str, str] | None:
    """jrc_cos7-1a_crop234 -> ("jrc_cos7-1a", "crop234"); None without a "_crop" part."""
    head, sep, tail = name.rpartition("_crop")
    if not sep or not head or not tail:
        return None
    return head, "crop" + tail


def read_datalist(path: str | os.PathLike, dataroot: str | os.PathLike,
                  channels: int) -> list[CropEntry]:
    """Entries in datalist order (training, then validation), paths resolved; annotated class
    indices are channels of a `channels`-class ontology.

    Relative image/label paths are resolved against `dataroot`; a relative `dataroot` is itself
    relative to the datalist's folder. Without a dataroot every path must be absolute.
    """
    path = Path(path)
    data = _load_json(path)
    root = _resolve_root(path, dataroot)
    problems: list[str] = []
    if "num_classes" in data and data["num_classes"] != channels:
        problems.append(
            f"{path}: field 'num_classes' is {data['num_classes']!r}; the configured ontology "
            f"(classes.atomic) has {channels} classes"
        )
    entries: list[CropEntry] = []
    located: list[tuple[str, str, str]] = []  # (crop, split, "split[i]") of every named entry
    relative: list[str] = []  # relative paths found without a dataroot
    for split in SPLITS:
        entries.extend(_read_split(path, data, split, root, channels, problems, located,
                                   relative))
    problems.extend(_relative_problem(relative))
    problems.extend(_duplicate_problems(path, located))
    if problems:
        raise InputError("\n".join(problems))
    return entries


def _load_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise InputError(f"{path}: datalist not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read datalist ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: datalist is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno})"
        ) from exc
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: datalist must hold a JSON object at the top level, got {_json_type(data)}"
        )
    return data


def _resolve_root(datalist: Path, dataroot: str | os.PathLike) -> Path | None:
    if not str(dataroot):
        return None
    root = Path(dataroot)
    return root if root.is_absolute() else datalist.parent / root


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_split(
    path: Path,
    data: dict[str, Any],
    split: str,
    root: Path | None,
    channels: int,
    problems: list[str],
    located: list[tuple[str, str, str]],
    relative: list[str],
) -> list[CropEntry]:
    """Valid entries of one split; problems and the located crop names are appended."""
    if split not in data:
        problems.append(f"{path}: missing key '{split}'")
        return []
    items = data[split]
    if not isinstance(items, list):
        problems.append(f"{path}: '{split}' must be a list of crops, got {_json_type(items)}")
        return []
    if not items:
        problems.append(f"{path}: '{split}' is empty; it needs at least one crop")
        return []
    out: list[CropEntry] = []
    for index, item in enumerate(items):
        locator = f"{split}[{index}]"
        entry, name = _read_entry(f"{path}: {locator}", split, item, root, channels, problems,
                                  relative)
        if name is not None:
            located.append((name, split, locator))
        if entry is not None:
            out.append(entry)
    return out


def _read_entry(
    where: str, split: str, item: Any, root: Path | None, channels: int, problems: list[str],
    relative: list[str],
) -> tuple[CropEntry | None, str | None]:
    """(entry if valid, crop name if the image name could be parsed); problems are appended."""
    if not isinstance(item, dict):
        problems.append(f"{where}: entry must be an object, got {_json_type(item)}")
        return None, None
    before = len(problems)
    image = _read_path(where, item, "image", root, problems, relative) if "image" in item else None
    names = _read_names(where, image, problems) if image is not None else None
    if names is not None:
        where = f"{where} (crop {names[0]})"
    missing = [f for f in REQUIRED_FIELDS if f not in item]
    problems.extend(f"{where}: missing field '{f}'" for f in missing)
    label = _read_path(where, item, "label", root, problems, relative) if "label" in item else None
    classes: tuple[int, ...] = ()
    if "annotated_classes" in item:
        try:
            classes = parse_annotated_classes(
                item["annotated_classes"], f"{where} field 'annotated_classes'", channels
            )
        except InputError as exc:
            problems.extend(str(exc).splitlines())
    if names is None:
        return None, None
    name, dataset, crop_id = names
    if len(problems) > before or image is None or label is None:
        return None, name
    return CropEntry(name, dataset, crop_id, split, image, label, classes), name


def _read_path(
    where: str, item: dict[str, Any], field: str, root: Path | None, problems: list[str],
    relative: list[str],
) -> Path | None:
    value = item[field]
    if not isinstance(value, str) or not value.strip():
        problems.append(
            f"{where}: field '{field}' must be a non-empty path string, got "
            f"{_json_type(value)} {value!r}"
        )
        return None
    path = Path(value)
    if path.is_absolute():
        return path
    if root is None:
        relative.append(f"{where}: field '{field}' is a relative path ({value!r})")
        return None
    return root / path


def _relative_problem(relative: list[str]) -> list[str]:
    """A single line for all relative paths found without a dataroot (a datalist written for
    a dataroot has hundreds): the first one, and how many more there are."""
    if not relative:
        return []
    more = f" (and {len(relative) - 1} more relative paths)" if len(relative) > 1 else ""
    return [f"{relative[0]} but no data.dataroot is configured{more}; use absolute paths or "
            "set data.dataroot"]


def _read_names(where: str, image: Path, problems: list[str]) -> tuple[str, str, str] | None:
    name = crop_name(image)
    parts = split_crop_name(name) if name is not None else None
    if name is None or parts is None:
        problems.append(
            f"{where}: field 'image' file name {image.name!r} does not follow "
            "'<dataset>_crop<id>_0000.nii.gz'"
        )
        return None
    return name, *parts


def _duplicate_problems(path: Path, located: list[tuple[str, str, str]]) -> list[str]:
    """A crop listed twice in one split, or in both training and validation."""
    first: dict[str, tuple[str, str]] = {}
    problems: list[str] = []
    for name, split, locator in located:
        if name not in first:
            first[name] = (split, locator)
            continue
        other_split, other_locator = first[name]
        if other_split != split:
            problems.append(
                f"{path}: crop {name} is in both training ({other_locator}) and "
                f"validation ({locator}); a crop may be in one split only"
            )
        else:
            problems.append(
                f"{path}: {locator} (crop {name}): duplicate crop name, already at "
                f"{other_locator}"
            )
    return problems
