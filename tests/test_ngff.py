"""OME-NGFF 0.4 multiscale metadata: levels read back as written, level selection by voxel size,
and one-line errors naming the group for metadata the challenge's layout never has."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from cellmapseg.data import ngff
from cellmapseg.errors import InputError


def pyramid(tmp_path, name="em", **kw):
    group = zarr.open_group(tmp_path / f"{name}.zarr", mode="w", zarr_format=2)
    data = np.arange(8 * 10 * 12, dtype=np.uint8).reshape(8, 10, 12)
    ngff.write_multiscale(group, {"s0": data, "s1": data[::2, ::2, ::2]},
                          kw.get("voxel_sizes", [(4.0, 4.0, 4.0), (8.0, 8.0, 8.0)]),
                          kw.get("translations", [(2.0, 2.0, 2.0), (4.0, 4.0, 4.0)]), chunks=4)
    return zarr.open_group(tmp_path / f"{name}.zarr", mode="r", zarr_format=2)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert len(text.splitlines()) == 1, text
    return text


def test_levels_read_back_as_written(tmp_path):
    group = pyramid(tmp_path)
    s0, s1 = ngff.levels(group)
    assert s0 == ngff.Level("s0", (4.0, 4.0, 4.0), (2.0, 2.0, 2.0), (8, 10, 12))
    assert s1 == ngff.Level("s1", (8.0, 8.0, 8.0), (4.0, 4.0, 4.0), (4, 5, 6))
    # translation is voxel 0's centre: s0 starts at 0 nm, and both levels end at the same edge
    np.testing.assert_allclose(s0.start, 0.0)
    np.testing.assert_allclose(s0.stop, [32, 40, 48])
    np.testing.assert_allclose(s1.start, 0.0)
    np.testing.assert_allclose(s1.stop, s0.stop)
    assert group["s0"].metadata.dimension_separator == "/"
    np.testing.assert_array_equal(group["s1"][...], group["s0"][::2, ::2, ::2])


def test_level_at_picks_the_level_of_the_voxel_size(tmp_path):
    group = pyramid(tmp_path)
    assert ngff.level_at(group, (8, 8, 8)).path == "s1"
    assert ngff.level_at(group, (4.002, 4.0, 3.998), rtol=1e-3).path == "s0"


def test_level_at_refuses_a_missing_resolution_naming_the_group_and_the_levels(tmp_path):
    group = pyramid(tmp_path)
    with pytest.raises(InputError) as exc:
        ngff.level_at(group, (16, 16, 16))
    text = one_line(exc)
    assert "em.zarr" in text and "[16, 16, 16]" in text
    assert "s0 [4, 4, 4]" in text and "s1 [8, 8, 8]" in text


def test_finest_is_the_smallest_voxel_whatever_the_order(tmp_path):
    group = pyramid(tmp_path, voxel_sizes=[(8.0, 8.0, 8.0), (4.0, 4.0, 2.0)])
    assert ngff.finest(group).path == "s1"


def test_other_length_units_are_converted_to_nm(tmp_path):
    group = zarr.open_group(tmp_path / "um.zarr", mode="w", zarr_format=2)
    ngff.write_multiscale(group, {"s0": np.zeros((2, 2, 2), np.uint8)}, [(0.004,) * 3],
                          [(0.002,) * 3])
    attrs = group.attrs.asdict()
    for axis in attrs["multiscales"][0]["axes"]:
        axis["unit"] = "micrometer"
    group.attrs.put(attrs)
    (level,) = ngff.levels(group)
    np.testing.assert_allclose(level.voxel_size, 4.0)
    np.testing.assert_allclose(level.translation, 2.0)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda a: a.pop("multiscales"), "not an OME-NGFF multiscale group"),
    (lambda a: a["multiscales"][0]["datasets"][1].update(path="s9"), "s9: array listed"),
    (lambda a: a["multiscales"][0].update(axes=[{"name": n} for n in "xyz"]), "expected z, y, x"),
    (lambda a: a["multiscales"][0]["datasets"][0].update(coordinateTransformations=[]),
     "has no scale"),
    (lambda a: a["multiscales"][0]["datasets"][0]["coordinateTransformations"][0].update(
        scale=[4.0, 4.0]), "not three finite numbers"),
])
def test_malformed_metadata_is_one_line_naming_the_group(tmp_path, edit, expected):
    pyramid(tmp_path)
    writable = zarr.open_group(tmp_path / "em.zarr", mode="a", zarr_format=2)
    attrs = writable.attrs.asdict()
    edit(attrs)
    writable.attrs.put(attrs)
    with pytest.raises(InputError) as exc:
        ngff.levels(zarr.open_group(tmp_path / "em.zarr", mode="r", zarr_format=2))
    text = one_line(exc)
    assert expected in text and "em.zarr" in text


def test_an_array_is_not_a_multiscale_group(tmp_path):
    group = pyramid(tmp_path)
    with pytest.raises(InputError) as exc:
        ngff.levels(group["s0"], where="x/s0")
    assert one_line(exc) == "x/s0: is an array, not an OME-NGFF multiscale group"
