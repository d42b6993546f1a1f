"""One streamed pass over a crop's image and label (data.volume_io.stream_voxels: a NIfTI file
or a Zarr crop reference): the checks that need the voxels and the inventory's statistics,
gathered chunk by chunk, so memory is bounded by a chunk whatever the crop's size and each
file is read once. The image arrives in whole planes of its last axis, so the same pass
summarises its black padding (data.padding.BorderRuns)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellmapseg.data.padding import BorderRuns
from cellmapseg.data.volume_io import STREAM_CHUNK_BYTES, read_header, stream_voxels

# Voxels handled at once inside a chunk: the statistics widen to float64 (the counts to int64),
# 8 bytes a voxel and a few temporaries, so a 64 MB chunk of uint8 handled whole held 1.1 GB
# (measured: benchmarks/zarr_route.py --stages store); pieces of 4 M voxels hold ~100 MB.
PIECE = 1 << 22


def _pieces(chunk: np.ndarray) -> list[np.ndarray]:
    flat = chunk.reshape(-1)
    return [flat[i:i + PIECE] for i in range(0, flat.size, PIECE)]


@dataclass
class ImageScan:
    """Non-finite voxels, then (while every voxel is finite) the range, whether all values are
    integers, and mean and variance merged chunk by chunk (Chan et al.'s pairwise update, as
    stable as a two-pass sum of squared deviations)."""

    dtype: np.dtype | None = None
    voxels: int = 0
    nonfinite: int = 0
    lo: float = math.inf
    hi: float = -math.inf
    integral: bool = True
    mean: float = 0.0
    m2: float = 0.0
    zeros: int = 0
    runs: BorderRuns | None = None  # with `planes`: chunks are whole planes of the last axis

    def add(self, chunk: np.ndarray) -> None:
        self.dtype = chunk.dtype if self.dtype is None else self.dtype
        if self.runs is not None:
            d, h, _ = self.runs.shape
            done = self.voxels  # voxels taken in so far
            if chunk.size % (d * h) or done % (d * h):
                raise ValueError("ImageScan with runs needs chunks of whole planes")
            self.runs.add(chunk.reshape(d, h, -1, order="F"), done // (d * h))
        for piece in _pieces(chunk):
            self.zeros += piece.size - int(np.count_nonzero(piece))
            self._add(piece)

    def _add(self, chunk: np.ndarray) -> None:
        if chunk.size == 0:
            return
        if chunk.dtype.kind == "f":
            bad = chunk.size - int(np.count_nonzero(np.isfinite(chunk)))
            self.nonfinite += bad
        if self.nonfinite:  # the crop is rejected: only the count matters from here on
            self.voxels += chunk.size
            return
        self.lo, self.hi = min(self.lo, float(chunk.min())), max(self.hi, float(chunk.max()))
        if self.integral and chunk.dtype.kind == "f":
            self.integral = bool(np.array_equal(chunk, np.round(chunk)))
        n = chunk.size
        mean = float(np.sum(chunk, dtype=np.float64)) / n
        m2 = float(np.sum(np.square(chunk.astype(np.float64) - mean)))
        total = self.voxels + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.voxels * n / total
        self.voxels = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.voxels) if self.voxels else 0.0

    def uint8_lossless(self) -> bool:
        return self.integral and self.lo >= 0 and self.hi <= 255

    def compact_dtype(self) -> np.dtype:
        """data.compact.compact_image_dtype's choice, from the streamed range."""
        dtype = np.dtype(self.dtype)
        if dtype in (np.uint8, np.uint16):
            return dtype
        if self.nonfinite or (dtype.kind == "f" and not self.integral):
            return np.dtype(np.float32)
        lo, hi = (self.lo, self.hi) if self.voxels else (0, 0)
        if lo >= 0 and hi <= 255:
            return np.dtype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return np.dtype(np.uint16)
        if lo >= -32768 and hi <= 32767:
            return np.dtype(np.int16)
        return np.dtype(np.float32)


@dataclass
class LabelScan:
    """Voxels per label value 0..max(labels), and every value that is neither 0 nor one of
    `labels` (the ontology's label values)."""

    labels: tuple[int, ...]
    counts: np.ndarray = field(init=False)
    bad: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        top = max(self.labels, default=0)
        self.counts = np.zeros(top + 1, np.int64)
        self._allowed = np.zeros(top + 1, bool)
        self._allowed[[0, *self.labels]] = True

    def add(self, chunk: np.ndarray) -> None:
        for piece in _pieces(chunk):
            self._add(piece)

    def _add(self, chunk: np.ndarray) -> None:
        if chunk.size == 0:
            return
        top = self.counts.size - 1
        if chunk.min() < 0 or chunk.max() > top:
            outside = (chunk < 0) | (chunk > top)
            self.bad.update(int(v) for v in np.unique(chunk[outside]))
            chunk = chunk[~outside]
        counts = np.bincount(chunk.astype(np.int64), minlength=top + 1)[: top + 1]
        self.bad.update(int(v) for v in np.flatnonzero((counts > 0) & ~self._allowed))
        self.counts += counts


def scan_image(path: str | Path) -> ImageScan:
    """The image's statistics and its BorderRuns, from chunks of whole planes (as many as fit
    in the streaming chunk, at least one)."""
    header = read_header(path)
    shape = header.shape3d
    if shape is None:
        scan = ImageScan()
        chunks = stream_voxels(path)
    else:
        scan = ImageScan(runs=BorderRuns.empty(shape))
        plane = shape[0] * shape[1] * np.dtype(header.dtype).itemsize
        chunks = stream_voxels(path, max(1, STREAM_CHUNK_BYTES // plane) * plane)
    for chunk in chunks:
        scan.add(chunk)
    return scan


def scan_label(path: str | Path, labels: tuple[int, ...]) -> LabelScan:
    scan = LabelScan(labels)
    for chunk in stream_voxels(path):
        scan.add(chunk)
    return scan
