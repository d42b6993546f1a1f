"""Semantic scores: voxel tp/fp/fn (evaluate.metrics) counted block by block, so memory stays
bounded. Prediction and truth are binarised with `> 0` (reference scoring.py `score_semantic`).
The challenge pools these counts per class over crops (aggregation.py); per-crop IoU and Dice
are for inspection only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cellmapseg.blockwise import in_values, slices, spans
from cellmapseg.evaluate.metrics import Counts, count_block


def block_shape(shape: Sequence[int], block: int, chunks: Sequence[int] | None) -> tuple[int, ...]:
    """Per-axis block edge: `block` rounded to a multiple of the Zarr chunk (so no chunk is
    decoded twice), never larger than the axis."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    chunks = chunks or (block,) * len(shape)
    edges = (c * max(1, round(block / c)) for c in chunks)
    return tuple(max(1, min(e, n)) for e, n in zip(edges, shape, strict=True))


def semantic_counts(pred: Any, truth_label: Any, values: int | Sequence[int],
                    block: int = 128) -> Counts:
    """Counts of `pred > 0` against the voxels of `truth_label` holding one of `values` (an
    atomic class's label value, or a group's members' values), read one block at a time.

    `pred` is a Zarr array or anything sliceable with `.shape` (ndarray, memory-map);
    `truth_label` holds label values and has the same shape.
    """
    values = (values,) if isinstance(values, (int, np.integer)) else tuple(values)
    shape = tuple(pred.shape)
    if tuple(truth_label.shape) != shape:
        raise ValueError(f"prediction shape {shape} != truth shape {tuple(truth_label.shape)}")
    edges = block_shape(shape, block, getattr(pred, "chunks", None))
    total = Counts()
    for core in spans(shape, edges):
        sl = slices(core)
        truth = in_values(np.asarray(truth_label[sl]), values)
        total += count_block(np.asarray(pred[sl]) > 0, truth)
    return total
