"""Streaming a NIfTI once: the chunks are exactly the voxels `load_array` returns (file order),
damaged files fail in one line, and the predict stage's image copy is the crop itself."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cellmapseg.data import nifti, volume_io
from cellmapseg.errors import InputError


def write(path: Path, array: np.ndarray, slope_inter: tuple[float, float] | None = None) -> Path:
    img = nib.Nifti1Image(array, np.diag([8.0, 8.0, 8.0, 1.0]))
    if slope_inter:
        img.header.set_slope_inter(*slope_inter)
    nib.save(img, path)
    return path


@pytest.mark.parametrize(("name", "shape", "dtype", "scaling"), [
    ("f.nii.gz", (17, 23, 31), np.float32, None),
    ("u.nii.gz", (9, 8, 7), np.uint8, None),
    ("s.nii.gz", (9, 8, 7), np.int16, (0.5, 3.0)),
    ("v.nii.gz", (5, 6, 7, 1), np.float32, None),
    ("plain.nii", (6, 5, 4), np.float32, None),
])
@pytest.mark.parametrize("chunk_bytes", [7, 64, 1 << 20])
def test_chunks_are_the_voxels_of_load_array_in_file_order(tmp_path, name, shape, dtype, scaling,
                                                           chunk_bytes):
    array = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    path = write(tmp_path / name, array, scaling)
    ref = nifti.load_array(path)
    chunks = list(nifti.stream_voxels(path, chunk_bytes=chunk_bytes))
    assert max(c.size for c in chunks) <= max(chunk_bytes // np.dtype(dtype).itemsize, 1)
    flat = np.concatenate(chunks)
    assert flat.dtype == ref.dtype
    np.testing.assert_array_equal(flat, ref.ravel(order="F"))


def test_a_truncated_gzip_fails_in_one_line(tmp_path):
    path = write(tmp_path / "t.nii.gz", np.arange(50_000, dtype=np.float32).reshape(50, 40, 25))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"t\.nii\.gz: corrupt or truncated gzip data"):
        list(nifti.stream_voxels(path))


def test_a_damaged_gzip_trailer_is_caught_after_the_last_voxel(tmp_path):
    path = write(tmp_path / "c.nii.gz", np.arange(6_000, dtype=np.float32).reshape(20, 30, 10))
    raw = gzip.decompress(path.read_bytes())
    damaged = bytearray(gzip.compress(raw))
    damaged[-8] ^= 0xFF  # the CRC32 of the trailer
    path.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match="corrupt or truncated gzip data"):
        list(nifti.stream_voxels(path))


def test_the_predict_stage_image_copy_equals_the_crop(tmp_path):
    image = np.random.default_rng(1).integers(0, 253, (19, 21, 23)).astype(np.float32)
    path = write(tmp_path / "img_0000.nii.gz", image)
    regions = volume_io.stream_to_npy(path, np.dtype(np.uint8), tmp_path / "copy.npy")
    assert regions.shape == image.shape
    np.testing.assert_array_equal(regions[:, :, :], image.astype(np.uint8))
    np.testing.assert_array_equal(regions[3:9, 2:20, 5:6], image[3:9, 2:20, 5:6])


def test_a_corner_is_read_from_the_first_planes_only(tmp_path):
    image = np.random.default_rng(2).integers(0, 253, (30, 20, 40)).astype(np.float32)
    path = write(tmp_path / "big.nii.gz", image)
    np.testing.assert_array_equal(volume_io.read_corner(path, 8), image[:8, :8, :8])
    np.testing.assert_array_equal(volume_io.read_corner(path, 64), image)


def test_axis0_slices_and_counts_are_streamed_from_the_file(tmp_path):
    label = np.random.default_rng(3).integers(0, 15, (13, 17, 19)).astype(np.uint8)
    path = write(tmp_path / "lab.nii.gz", label)
    for index in (0, 6, 12):
        np.testing.assert_array_equal(volume_io.axis0_slice(path, index), label[index])
    counts = volume_io.axis0_counts(path, 256)
    want = np.stack([np.bincount(s.ravel(), minlength=256) for s in label])
    np.testing.assert_array_equal(counts, want)
