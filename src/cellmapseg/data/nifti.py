"""NIfTI reading with one-line errors that name the file.

`read_header` touches only the header (nibabel loads lazily), so checks on shape, dtype and
spacing cost a few hundred bytes per file; `load_array` reads the voxels once, in their on-disk
dtype (no float64 copy as `get_fdata` would make); `stream_voxels` hands them out in chunks of
bounded size, decompressing the file once from start to end.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from isal import igzip, isal_zlib
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.volumeutils import apply_read_scaling

from cellmapseg.errors import InputError

_NIFTI_TYPES = (nib.Nifti1Image, nib.Nifti2Image)


# What a damaged gzip stream raises, from the standard library's decoder and from ISA-L's.
DECOMPRESS_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, isal_zlib.error)
_NIFTI1_HEADER_BYTES = 348
_SNIFF_BYTES = 540  # nibabel sniffs the larger NIfTI-2 header size when guessing the type


@dataclass(frozen=True)
class NiftiHeader:
    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype  # on-disk dtype (before any scl_slope/scl_inter scaling)
    spacing: tuple[float, ...]  # voxel size of the first (up to) 3 axes, header units
    ndim: int
    scaled: bool  # header carries a non-identity scl_slope/scl_inter
    affine: np.ndarray  # 4 x 4 voxel -> world (header units); nibabel's best affine

    @property
    def translation(self) -> tuple[float, float, float]:
        """World position of the first voxel's centre, array axis order (the OME-NGFF and
        challenge `translation`)."""
        return tuple(float(t) for t in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def shape3d(self) -> tuple[int, int, int] | None:
        """The 3D shape, squeezing a trailing singleton 4th axis; None if not volumetric."""
        if self.ndim == 3:
            return self.shape  # type: ignore[return-value]
        if self.ndim == 4 and self.shape[3] == 1:
            return self.shape[:3]  # type: ignore[return-value]
        return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _load_image(path: Path, mmap: bool) -> nib.spatialimages.SpatialImage:
    """nib.load (header only; voxels stay on disk) with the real failure modes mapped."""
    try:
        img = nib.load(path, mmap=mmap)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: corrupt or truncated gzip header ({_one_line(exc)})") from exc
    except (ImageFileError, HeaderDataError) as exc:
        # nibabel reports a damaged .gz as "cannot work out file type"; say what is wrong.
        gz_problem = _gzip_header_problem(path)
        if gz_problem:
            raise InputError(f"{path}: corrupt or truncated gzip header ({gz_problem})") from exc
        raise InputError(f"{path}: not a readable NIfTI file ({_one_line(exc)})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({_one_line(exc)})") from exc
    if not isinstance(img, _NIFTI_TYPES):
        raise InputError(f"{path}: not a NIfTI file (nibabel reads it as {type(img).__name__})")
    return img


def _gzip_header_problem(path: Path) -> str | None:
    """Why the start of a .gz file cannot be decompressed, or None if it can (or is no .gz)."""
    if not path.name.endswith(".gz") or not path.is_file():
        return None
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with gzip.open(path, "rb") as stream:
            head = stream.read(_SNIFF_BYTES)
    except (EOFError, zlib.error, OSError) as exc:  # OSError covers gzip.BadGzipFile
        return _one_line(exc)
    if len(head) < _NIFTI1_HEADER_BYTES:
        return f"only {len(head)} bytes decompress; a NIfTI header needs {_NIFTI1_HEADER_BYTES}"
    return None


def read_header(path: str | os.PathLike) -> NiftiHeader:
    """Shape, on-disk dtype and spacing of a NIfTI file, without reading its voxel data."""
    path = Path(path)
    img = _load_image(path, mmap=False)
    header = img.header
    # The loaded header has its scaling reset; the proxy holds what the file says.
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    return NiftiHeader(
        path=path,
        shape=tuple(int(n) for n in img.shape),
        dtype=np.dtype(header.get_data_dtype()),
        spacing=tuple(float(z) for z in header.get_zooms()[:3]),
        ndim=len(img.shape),
        scaled=(slope, inter) != (1.0, 0.0),
        affine=np.asarray(img.affine, dtype=np.float64),
    )


def _read_voxels(path: Path, img: nib.spatialimages.SpatialImage) -> np.ndarray:
    if not path.name.endswith(".gz"):
        return np.asanyarray(img.dataobj)
    # nibabel stops decompressing at the last voxel, so the gzip trailer (CRC32 + length) is
    # never checked and damaged deflate data can decode to silently wrong voxels. Read through
    # our own stream and drain it: GzipFile verifies the trailer when it reaches the end.
    with gzip.open(path, "rb") as stream:
        klass = type(img)
        own = klass.from_file_map(klass.make_file_map({"image": stream}), mmap=False)
        array = np.asanyarray(own.dataobj)
        while stream.read(1 << 20):
            pass
    return array


def load_array(path: str | os.PathLike, dtype: np.dtype | type | None = None) -> np.ndarray:
    """Read all voxels (scaled as the header says, gzip CRC verified); cast only if `dtype`."""
    path = Path(path)
    # mmap=False: the data is read here, so a damaged file fails here and not at first use.
    img = _load_image(path, mmap=False)
    try:
        array = _read_voxels(path, img)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: corrupt or truncated gzip data ({_one_line(exc)})") from exc
    except OSError as exc:  # nibabel: "Expected N bytes, got M bytes" for a short .nii
        raise InputError(f"{path}: truncated or unreadable data ({_one_line(exc)})") from exc
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array


STREAM_CHUNK_BYTES = 64 * 2**20  # decompressed bytes per chunk of `stream_voxels`


def _open_stream(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when it is a .gz by ISA-L (python-isal: the same format
    and CRC checks as zlib in 0.6x its time here; benchmarks/image_stream.py)."""
    if not path.name.endswith(".gz"):
        return open(path, "rb")
    return igzip.open(path, "rb")


def stream_voxels(path: str | os.PathLike, chunk_bytes: int = STREAM_CHUNK_BYTES
                  ) -> Iterator[np.ndarray]:
    """Every voxel of the file once, as flat chunks in file order (the first axis fastest:
    Fortran order of the array), scaled as the header says, like `load_array` returns them.

    The file is read (and decompressed) once from start to end: time is linear in the file and
    memory bounded by the chunk. nibabel's proxy, sliced slab by slab, decompresses a .nii.gz
    from its start for every slab (no random access into a gzip stream), which is quadratic in
    the crop. The gzip trailer (CRC32 and length) is checked after the last voxel.
    """
    path = Path(path)
    img = _load_image(path, mmap=False)
    proxy = img.dataobj
    dtype = np.dtype(img.header.get_data_dtype())
    total = int(np.prod(img.shape)) * dtype.itemsize
    step = max(dtype.itemsize, chunk_bytes // dtype.itemsize * dtype.itemsize)
    try:
        with _open_stream(path) as stream:
            _skip(stream, int(proxy.offset), path)
            done = 0
            while done < total:
                want = min(step, total - done)
                buf = stream.read(want)
                if len(buf) < want:
                    raise InputError(f"{path}: truncated or unreadable data (expected {total} "
                                     f"voxel bytes, got {done + len(buf)})")
                done += want
                yield apply_read_scaling(np.frombuffer(buf, dtype), proxy.slope, proxy.inter)
            while stream.read(1 << 20):  # reach the end: the gzip trailer is verified there
                pass
    except DECOMPRESS_ERRORS as exc:
        raise InputError(f"{path}: corrupt or truncated gzip data ({_one_line(exc)})") from exc
    except OSError as exc:
        raise InputError(f"{path}: truncated or unreadable data ({_one_line(exc)})") from exc


def _skip(stream: BinaryIO, n: int, path: Path) -> None:
    while n > 0:
        got = len(stream.read(min(n, 1 << 20)))
        if got == 0:
            raise InputError(f"{path}: truncated before its voxel data")
        n -= got
