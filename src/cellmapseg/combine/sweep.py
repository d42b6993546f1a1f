"""A crop's scores at every candidate threshold, from kept probabilities (the tuning's input).

For each threshold of the grid, every atomic class of the crop is thresholded there (the mean
of the source stores' probabilities: one store for a model, every member for a mean ensemble)
into a scratch predictions store through the predict stage's own writer (predict.threshold),
and scored by the evaluate stage's own scorer, at the ground truth's resolution on the Zarr
route. The rows are eval.csv's plus `threshold`. Groups are left out: they follow their
members' choices and are scored with the derived entry itself.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import zarr

from cellmapseg.classes import Ontology
from cellmapseg.config import Config
from cellmapseg.data import predictions
from cellmapseg.data.datalist import parse_annotated_classes
from cellmapseg.data.inventory import CROP_COLUMNS, read_inventory, select
from cellmapseg.evaluate.score import score_table, write_table
from cellmapseg.evaluate.truth import ZarrTruth
from cellmapseg.predict.threshold import Recipe, write_from_probabilities

log = logging.getLogger(__name__)


def atomic_only(ontology: Ontology) -> Ontology:
    """The ontology without its groups (the classes a threshold is chosen for)."""
    return dataclasses.replace(ontology, groups=())


def open_sources(paths: Sequence[Path], crop_id: str, ontology: Ontology
                 ) -> list[dict[str, zarr.Array]]:
    """Each source's kept probabilities of one crop, checked, all of one shape."""
    stores, shape = [], None
    for path in paths:
        arrays = predictions.probability_arrays(predictions.open_store(Path(path)), Path(path),
                                                crop_id, ontology, shape)
        shape = tuple(next(iter(arrays.values())).shape)
        stores.append(arrays)
    return stores


def sweep_crop(cfg: Config, sources: Sequence[Path], inventory_csv: Path, crop_id: str,
               out_csv: Path, truth: ZarrTruth | None = None) -> pd.DataFrame:
    """Score one validation crop's mean probability of `sources` (kept-probability crop
    stores) at every threshold of tuning.grid; write and return the rows."""
    atomic = atomic_only(cfg.classes)
    inventory = read_inventory(inventory_csv, CROP_COLUMNS)
    row = select(inventory, [crop_id], "sweep").iloc[0]
    crop = str(row["crop_id"])
    # only the classes the crop annotates are scored: only they are thresholded
    listed = row["annotated_classes"] if isinstance(row["annotated_classes"], str) else ""
    scored = atomic.annotated(parse_annotated_classes(listed, f"crop {row['crop']}",
                                                      atomic.num_channels))
    stores = open_sources(sources, crop, atomic)
    first = next(iter(stores[0].values()))
    shape, translation = tuple(first.shape), first.attrs["translation"]
    everyone = tuple(range(len(stores)))
    parts = []
    with tempfile.TemporaryDirectory(prefix=".sweep-", dir=Path(out_csv).parent) as tmp:
        for t in cfg.tuning.grid:
            store = Path(tmp) / f"t{t:g}.zarr"
            with predictions.writing(store) as root:
                arrays = predictions.create_crop(root, crop, shape, cfg.data.spacing_nm,
                                                 atomic, translation, scored)
                recipe = Recipe((everyone,) * atomic.num_channels, (t,) * atomic.num_channels)
                write_from_probabilities(arrays, stores, recipe, atomic,
                                         cfg.inference.block_size)
            table, _ = score_table(store, inventory, cfg.data.spacing_nm, Path(tmp), atomic,
                                   [crop], cfg.inference.block_size, truth,
                                   cfg.data.padding_mask)
            table.insert(0, "threshold", float(t))
            parts.append(table)
            log.info("swept %s at threshold %g: %d class row(s)", crop, t, len(table))
    table = pd.concat(parts, ignore_index=True)
    write_table(table, out_csv)
    return table
