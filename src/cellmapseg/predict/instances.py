"""Connected components (26-connectivity) of a mask too large for memory, block by block.

Each block is labelled on its own (scipy.ndimage.label) with ids offset to be unique across the
crop. Then every block is labelled again on its core plus a one-voxel halo on all sides; the
provisional ids that fall into one halo component touch each other across a block face, edge or
corner, so they are edges of a graph whose connected components (scipy.sparse.csgraph) are the
crop's objects. A last pass maps provisional ids to final consecutive ids. Memory is bounded by
the block; the result equals labelling the whole mask at once (up to the numbering).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cellmapseg.predict.blocks import blocks

STRUCTURE_26 = np.ones((3, 3, 3), bool)


def label_block(mask: np.ndarray, offset: int) -> tuple[np.ndarray, int]:
    """Provisional ids (offset + 1 ...) of one block's components, and how many there are."""
    labels, n = ndi.label(mask, structure=STRUCTURE_26)
    labels = labels.astype(np.uint32)
    labels[labels > 0] += np.uint32(offset)
    return labels, n


def _halo(core: Sequence[tuple[int, int]], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(a - 1, 0), min(b + 1, n)) for (a, b), n in zip(core, shape, strict=True))


def _edges(provisional: np.ndarray) -> np.ndarray:
    """(k, 2) pairs of provisional ids that one halo component joins."""
    comp, _ = ndi.label(provisional > 0, structure=STRUCTURE_26)
    pairs = np.unique(np.stack([comp[comp > 0], provisional[comp > 0]], axis=1), axis=0)
    # consecutive ids within the same halo component are connected; a chain suffices
    same = pairs[1:, 0] == pairs[:-1, 0]
    return np.stack([pairs[:-1, 1][same], pairs[1:, 1][same]], axis=1)


def _first_voxels(array, block: Sequence[int], count: int) -> np.ndarray:
    """Per provisional id, the C-order index of its first voxel in the whole crop."""
    first = np.full(count + 1, np.iinfo(np.int64).max, np.int64)
    for core in blocks(array.shape, block):
        ids = np.asarray(array[tuple(slice(*c) for c in core)])
        where = np.nonzero(ids)
        coords = tuple(w + c[0] for w, c in zip(where, core, strict=True))
        np.minimum.at(first, ids[where], np.ravel_multi_index(coords, array.shape))
    return first


def merge(array, block: Sequence[int], count: int) -> int:  # zarr/numpy array
    """Turn the provisional ids in `array` (written block by block by `label_block`) into final
    ids 1..N in place, numbered like scipy.ndimage.label on the whole crop (by each object's
    first voxel in C order), so the result does not depend on the block size; return N."""
    if count == 0:
        return 0
    edges = [_edges(np.asarray(array[_halo(core, array.shape)]))
             for core in blocks(array.shape, block)]
    pairs = np.concatenate([e for e in edges if len(e)] or [np.zeros((0, 2), np.int64)])
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                       shape=(count + 1, count + 1))
    _, component = connected_components(graph, directed=False)
    objects = component[1:]
    start = np.full(component.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(start, objects, _first_voxels(array, block, count)[1:])
    present = np.unique(objects)
    rank = np.zeros(component.max() + 1, np.uint32)
    rank[present[np.argsort(start[present])]] = np.arange(1, len(present) + 1, dtype=np.uint32)
    lookup = np.concatenate([[0], rank[objects]]).astype(np.uint32)
    for core in blocks(array.shape, block):
        window = tuple(slice(*c) for c in core)
        array[window] = lookup[np.asarray(array[window])]
    return len(present)
