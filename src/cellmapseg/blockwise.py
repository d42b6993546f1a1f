"""Arrays too large for memory, a block at a time: tiling, an on-disk scratch array, and
26-connected components labelled block by block (for predictions and for scoring).

Connected components. Each block is labelled on its own (scipy.ndimage.label) with ids offset
to be unique across the array. Then every block is labelled again on its core plus a one-voxel
halo on all sides; the provisional ids that fall into one halo component touch each other
across a block face, edge or corner, so they are edges of a graph whose connected components
(scipy.sparse.csgraph) are the array's objects. A last pass maps provisional ids to final ids
numbered like scipy.ndimage.label on the whole array (by each object's first voxel in C
order). With `by_id`, voxels of different input ids never join (the challenge's relabelling
of an instance volume). Memory is bounded by the block and by the number of objects.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

Span = tuple[int, int]
STRUCTURE_26 = np.ones((3, 3, 3), bool)


def spans(shape: Sequence[int], block: Sequence[int]) -> Iterator[tuple[Span, ...]]:
    """Core spans of the blocks tiling `shape` (the last block per axis may be short), C order."""
    axes = [[(b, min(b + k, n)) for b in range(0, n, k)] for n, k in zip(shape, block, strict=True)]
    return itertools.product(*axes)


def slices(core: Sequence[Span]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in core)


class ScratchArray:
    """A Fortran- or C-ordered .npy on disk read and written a region at a time. The file is
    mapped only for the duration of one access, so the process never holds more than one
    region's pages (a mapping kept open would count every touched page as its memory)."""

    def __init__(self, path: Path, shape: Sequence[int] | None = None,
                 dtype: np.dtype | type | None = None, fortran_order: bool = False) -> None:
        self.path = Path(path)
        if shape is not None:  # create, zero-filled (a sparse file)
            np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype, shape=tuple(shape),
                                      fortran_order=fortran_order)
        head = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype = tuple(head.shape), head.dtype
        del head

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:  # any numpy index
        mapped = np.load(self.path, mmap_mode="r")
        try:
            return np.array(mapped[key])
        finally:
            del mapped

    def __setitem__(self, key: Any, value: Any) -> None:  # any numpy index and value
        # No flush: the written pages stay in the page cache, where the next mapping reads
        # them. msync walks the whole mapping, so a flush per write made scoring quadratic in
        # the crop (41.8 s of 133 s at 256 M voxels, 2.4 s of 26 s at 64 M).
        mapped = np.load(self.path, mmap_mode="r+")
        try:
            mapped[key] = value
        finally:
            del mapped


class ValueMask:
    """`label == value` (or `label` in `value`, a group's label values), computed per region
    read: a class mask over a label volume."""

    def __init__(self, label: Any, value: int | Sequence[int]) -> None:
        self.label = label
        self.values = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
        self.shape = tuple(label.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return in_values(np.asarray(self.label[key]), self.values)


def in_values(label: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """`label == values[0]` for one value, else the voxels holding any of `values`."""
    if len(values) == 1:
        return label == values[0]
    return np.isin(label, values)


def components_by_id(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of each id separately (touching voxels of different ids stay
    apart), numbered 1..n in no particular order; 0 stays 0."""
    foreground = ids != 0
    _, inverse = np.unique(ids[foreground], return_inverse=True)
    compact = np.zeros(ids.shape, dtype=np.int64)
    compact[foreground] = inverse + 1
    out = np.zeros(ids.shape, dtype=np.int64)
    n = 0
    for k, box in enumerate(ndi.find_objects(compact), start=1):
        if box is None:
            continue
        mine = compact[box] == k
        labels, m = ndi.label(mine, structure=STRUCTURE_26)
        out[box][mine] = labels[mine] + n
        n += int(m)
    return out, n


def _label(values: np.ndarray, by_id: bool) -> tuple[np.ndarray, int]:
    if by_id:
        return components_by_id(values)
    labels, n = ndi.label(values != 0, structure=STRUCTURE_26)
    return labels, int(n)


def label_block(values: np.ndarray, offset: int, by_id: bool = False) -> tuple[np.ndarray, int]:
    """Provisional ids (offset + 1 ...) of one block's components, and how many there are."""
    labels, n = _label(values, by_id)
    labels = labels.astype(np.uint32)
    labels[labels > 0] += np.uint32(offset)
    return labels, n


def _halo(core: Sequence[Span], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(a - 1, 0), min(b + 1, n)) for (a, b), n in zip(core, shape, strict=True))


def _edges(provisional: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    """(k, 2) pairs of provisional ids that one halo component joins."""
    comp, _ = _label(provisional if values is None else values, values is not None)
    inside = comp > 0
    # (halo component, provisional id) pairs as one int64 key each (both ids < 2**32): a 1-D
    # sort, several times faster than np.unique(axis=0) on the pairs, same order
    pairs = np.unique((comp[inside].astype(np.int64) << 32) | provisional[inside].astype(np.int64))
    halo, ids = pairs >> 32, pairs & 0xFFFFFFFF
    # consecutive ids within the same halo component are connected; a chain suffices
    same = halo[1:] == halo[:-1]
    return np.stack([ids[:-1][same], ids[1:][same]], axis=1)


def _first_voxels(array: Any, block: Sequence[int], count: int) -> np.ndarray:
    """Per provisional id, the C-order index of its first voxel in the whole array."""
    first = np.full(count + 1, np.iinfo(np.int64).max, np.int64)
    for core in spans(array.shape, block):
        ids = np.asarray(array[slices(core)])
        where = np.nonzero(ids)
        coords = tuple(w + c[0] for w, c in zip(where, core, strict=True))
        np.minimum.at(first, ids[where], np.ravel_multi_index(coords, array.shape))
    return first


def merge(array: Any, block: Sequence[int], count: int, values: Any = None) -> int:
    """Turn the provisional ids in `array` (written block by block by `label_block`) into final
    ids 1..N in place, numbered like scipy.ndimage.label on the whole array (by each object's
    first voxel in C order), so the result does not depend on the block size; return N.
    `values`: the input ids the blocks were labelled `by_id` from (None: a binary mask)."""
    if count == 0:
        return 0
    edges = []
    for core in spans(array.shape, block):
        halo = _halo(core, array.shape)
        edges.append(_edges(np.asarray(array[halo]),
                            None if values is None else np.asarray(values[halo])))
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
    for core in spans(array.shape, block):
        window = slices(core)
        array[window] = lookup[np.asarray(array[window])]
    return len(present)


def label_components(values: Any, out: Any, block: Sequence[int], by_id: bool = False) -> int:
    """26-connected components of `values` (nonzero voxels; with `by_id`, of each id apart)
    written to `out` (same shape, uint32) as ids 1..N in raster order of first voxels; return N.
    Both are read and written one block (plus a one-voxel halo) at a time."""
    count = 0
    for core in spans(values.shape, block):
        window = slices(core)
        out[window], n = label_block(np.asarray(values[window]), count, by_id)
        count += n
    return merge(out, block, count, values if by_id else None)
