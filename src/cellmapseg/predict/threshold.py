"""Class arrays of a crop from kept probabilities, a block at a time.

The network's predict stage and everything derived from kept probabilities (tuned thresholds,
ensembles) write their class arrays through `MaskWriter`, so a mask means the same everywhere:
each atomic class is `above(q, threshold)` of its kept probability (data.predictions), a group
the union (OR) of its members' masks (groups are never trained), an instance class the
26-connected components of its mask, labelled block by block and merged.

`Recipe` says where each atomic class's probability comes from: the mean of one or more
members' kept probabilities (one member: a model; all: a mean ensemble; one chosen per class:
a per-class ensemble), with its threshold.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from cellmapseg.blockwise import label_block, merge, slices, spans
from cellmapseg.classes import Ontology
from cellmapseg.data.predictions import above


def class_masks(binary: np.ndarray, ontology: Ontology) -> Iterator[tuple[str, np.ndarray]]:
    """(class, bool mask) of every class from a block's thresholded atomic channels: an atomic
    class is its channel, a group the union (OR) of its members' channels."""
    for name in ontology.names:
        members = ontology.members(name)
        yield name, (binary[members[0]] if len(members) == 1
                     else np.logical_or.reduce(binary[list(members)], axis=0))


class MaskWriter:
    """Writes one crop's class arrays (data.predictions.create_crop; those of `arrays`, every
    class of the ontology or some) from blocks of kept probabilities; `finish` merges the
    instance ids and returns the instances per instance class."""

    def __init__(self, arrays: Mapping[str, zarr.Array], ontology: Ontology,
                 thresholds: Sequence[float]) -> None:
        if len(thresholds) != ontology.num_channels:
            raise ValueError(f"{len(thresholds)} thresholds for {ontology.num_channels} classes")
        self.arrays, self.ontology, self.thresholds = arrays, ontology, list(thresholds)
        self.counts = {n: 0 for n in ontology.names if ontology.is_instance(n) and n in arrays}

    def write(self, core: tuple[slice, ...], q: np.ndarray) -> None:
        """`q`: (C, *core) kept probabilities (uint8, or the float mean of several)."""
        binary = np.stack([above(q[c], t) for c, t in enumerate(self.thresholds)])
        for name, mask in class_masks(binary, self.ontology):
            if name not in self.arrays:
                continue
            if name in self.counts:
                self.arrays[name][core], n = label_block(mask, self.counts[name])
                self.counts[name] += n
            else:
                self.arrays[name][core] = mask.astype(np.uint8)

    def finish(self, block: Sequence[int]) -> dict[str, int]:
        return {name: merge(self.arrays[name], block, n) for name, n in self.counts.items()}


@dataclass(frozen=True)
class Recipe:
    """Per atomic class (channel order): the members whose kept probabilities are averaged,
    and the threshold."""

    members: tuple[tuple[int, ...], ...]  # indices into the member stores, per channel
    thresholds: tuple[float, ...]

    def probabilities(self, stores: Sequence[Mapping[str, zarr.Array]],
                      ontology: Ontology, core: Sequence[tuple[int, int]],
                      offsets: Sequence[Sequence[int]]) -> np.ndarray:
        """(C, *core) probabilities of one block (member m's voxels shifted by offsets[m]):
        a member's uint8 values as they are, the float32 mean of several (their integer sum
        divided once: as many bytes per voxel as the network's logits)."""
        def read(m: int, name: str) -> np.ndarray:
            box = tuple(slice(a + o, b + o) for (a, b), o in zip(core, offsets[m], strict=True))
            return np.asarray(stores[m][name][box])

        out = []
        for name, members in zip(ontology.atomic, self.members, strict=True):
            if len(members) == 1:
                out.append(read(members[0], name))
            else:
                total = sum(read(m, name).astype(np.uint16) for m in members)
                out.append(np.asarray(total, np.float32) / np.float32(len(members)))
        return np.stack(out)


def write_from_probabilities(arrays: Mapping[str, zarr.Array],
                             stores: Sequence[Mapping[str, zarr.Array]], recipe: Recipe,
                             ontology: Ontology, block: int,
                             offsets: Sequence[Sequence[int]] | None = None) -> dict[str, int]:
    """Fill one crop's class `arrays` from the members' kept probabilities `stores` (each
    {atomic class: array}) by `recipe`; offsets[m]: where voxel 0 of the arrays lies in
    member m's store (default: the same voxels). Returns the instances per instance class."""
    shape = tuple(next(iter(arrays.values())).shape)
    offsets = [(0, 0, 0)] * len(stores) if offsets is None else offsets
    writer = MaskWriter(arrays, ontology, recipe.thresholds)
    for core in spans(shape, [block] * 3):
        writer.write(slices(core), recipe.probabilities(stores, ontology, core, offsets))
    return writer.finish([block] * 3)
