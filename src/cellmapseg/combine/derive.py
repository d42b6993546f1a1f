"""The predictions of a derived entry (tuned variant or ensemble), written from its members'
kept probabilities by its choices (thresholds.json, combine.choose) through the predict
stage's own writer: the same store layout and manifest as a network's prediction, so the
evaluate stage and the submission take them as they take a model's.

A validation crop is predicted with its fold's choices (made on the other folds' crops); a
test crop with the final ones. Test crops were predicted by each member with its own window
context, so their boxes differ: the derived entry covers the box every member holds (the test
manifest's region lies inside each), on the members' common grid (the EM level at the
training voxel size).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellmapseg.classes import Ontology
from cellmapseg.combine.choose import MEAN
from cellmapseg.combine.sweep import open_sources
from cellmapseg.config import Config, Entry
from cellmapseg.data import predictions
from cellmapseg.data.inventory import CROP_COLUMNS, read_inventory, select
from cellmapseg.errors import InputError
from cellmapseg.predict.threshold import Recipe, write_from_probabilities

log = logging.getLogger(__name__)


def recipe(choice: Mapping[str, Mapping[str, Any]], sources: Sequence[str],
           ontology: Ontology) -> Recipe:
    """Per atomic class, the member stores (indices into `sources`) and the threshold."""
    members, thresholds = [], []
    for name in ontology.atomic:
        c = choice[name]
        if c["member"] == MEAN:
            members.append(tuple(range(len(sources))))
        elif c["member"] in sources:
            members.append((list(sources).index(c["member"]),))
        else:
            raise InputError(f"thresholds.json: class {name} names member {c['member']!r}, "
                             f"not one of {list(sources)}")
        thresholds.append(float(c["threshold"]))
    return Recipe(tuple(members), tuple(thresholds))


def _manifest(cfg: Config, entry: Entry, choices: Mapping[str, Any]) -> dict[str, Any]:
    return {"model": entry.name, "kind": entry.kind, "method": entry.method,
            "thresholds_mode": entry.thresholds, "sources": list(entry.members),
            "classes": cfg.classes.summary(), "block_size": cfg.inference.block_size,
            "voxel_size": list(cfg.data.spacing_nm), "folds": {}, "crop_thresholds": {},
            "crop_members": {}, "crops": [], "crop_names": [], "instances": {},
            "seconds": {}, "grid": choices.get("grid")}


def _record(manifest: dict[str, Any], crop_id: str, name: str, rec: Recipe,
            choice: Mapping[str, Mapping[str, Any]], counts: dict[str, int], start: float,
            fold: int | None) -> None:
    manifest["crops"].append(crop_id)
    manifest["crop_names"].append(name)
    manifest["instances"][crop_id] = counts
    manifest["seconds"][crop_id] = round(time.perf_counter() - start, 3)
    manifest["crop_thresholds"][crop_id] = list(rec.thresholds)
    manifest["crop_members"][crop_id] = {c: v["member"] for c, v in choice.items()}
    if fold is not None:
        manifest["folds"][crop_id] = fold


def derive_crop(cfg: Config, entry: Entry, choices: Mapping[str, Any], sources: Sequence[Path],
                inventory_csv: Path, crop_id: str, out: Path) -> dict[str, Any]:
    """One validation crop of a derived entry into the store `out`, with the choices of the
    fold it is scored in; the manifest."""
    start = time.perf_counter()
    row = select(read_inventory(inventory_csv, CROP_COLUMNS), [crop_id], "derive").iloc[0]
    crop = str(row["crop_id"])
    if crop not in choices["crop_folds"]:
        raise InputError(f"thresholds.json of {entry.name}: crop {crop} is in no fold (the "
                         "validation crops changed: choose again)")
    fold = int(choices["crop_folds"][crop])
    choice = choices["per_fold"][fold]["classes"]
    if crop in choices["per_fold"][fold]["tuned_on"]:  # never: the folds are disjoint
        raise AssertionError(f"crop {crop} would be scored with choices made on it")
    rec = recipe(choice, list(entry.members), cfg.classes)
    stores = open_sources(sources, crop, cfg.classes)
    first = next(iter(stores[0].values()))
    manifest = _manifest(cfg, entry, choices)
    with predictions.writing(Path(out)) as root:
        arrays = predictions.create_crop(root, crop, tuple(first.shape), cfg.data.spacing_nm,
                                         cfg.classes, first.attrs["translation"])
        counts = write_from_probabilities(arrays, stores, rec, cfg.classes,
                                          cfg.inference.block_size)
        _record(manifest, crop, str(row["crop"]), rec, choice, counts, start, fold)
        root.attrs.update(manifest)
    log.info("derived %s of %s (fold %d, %s)", crop, entry.name, fold, entry.method)
    return manifest


def common_box(boxes: Sequence[Sequence[Sequence[int]]], crop_id: str) -> list[tuple[int, int]]:
    """The EM voxels every member's test box holds."""
    lo = np.max([[a for a, _ in b] for b in boxes], axis=0)
    hi = np.min([[b for _, b in box] for box in boxes], axis=0)
    if (hi <= lo).any():
        raise InputError(f"test crop {crop_id}: the members' predictions share no voxel")
    return [(int(a), int(b)) for a, b in zip(lo, hi, strict=True)]


def derive_test(cfg: Config, entry: Entry, choices: Mapping[str, Any],
                sources: Sequence[Path], manifests: Sequence[Mapping[str, Any]], out: Path
                ) -> dict[str, Any]:
    """Every test crop of a derived entry into the store `out` with the final choices, from
    the members' kept test probabilities (`sources`, with their test `manifests`)."""
    choice = choices["final"]["classes"]
    rec = recipe(choice, list(entry.members), cfg.classes)
    crops = list(manifests[0]["crops"])
    for path, m in zip(sources, manifests, strict=True):
        if list(m["crops"]) != crops:
            raise InputError(f"{path}: test crops {m['crops']} differ from {crops}")
    groups = [predictions.open_store(Path(p)) for p in sources]
    manifest = {**_manifest(cfg, entry, choices), "test_crops": {}}
    voxel = np.asarray(cfg.data.spacing_nm, float)
    with predictions.writing(Path(out)) as root:
        for crop in crops:
            start = time.perf_counter()
            boxes = [m["test_crops"][crop]["box"] for m in manifests]
            box = common_box(boxes, crop)
            offsets = [[a - b[0] for (a, _), b in zip(box, mb, strict=True)] for mb in boxes]
            stores = [predictions.probability_arrays(g, Path(p), crop, cfg.classes)
                      for g, p in zip(groups, sources, strict=True)]
            t0 = np.asarray(manifests[0]["test_crops"][crop]["translation"], float)
            translation = t0 + np.asarray(offsets[0]) * voxel
            arrays = predictions.create_crop(root, crop, tuple(b - a for a, b in box),
                                             cfg.data.spacing_nm, cfg.classes, translation)
            counts = write_from_probabilities(arrays, stores, rec, cfg.classes,
                                              cfg.inference.block_size, offsets)
            _record(manifest, crop, crop, rec, choice, counts, start, None)
            manifest["test_crops"][crop] = {
                **manifests[0]["test_crops"][crop], "box": [list(b) for b in box],
                "translation": [float(v) for v in translation]}
        root.attrs.update(manifest)
    log.info("derived %d test crop(s) of %s", len(crops), entry.name)
    return manifest
