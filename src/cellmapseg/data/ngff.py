"""OME-NGFF 0.4 multiscale metadata of a Zarr v2 group: the challenge's EM and label pyramids.

`multiscales[0].datasets[i]` names the array `path` of level i; its `coordinateTransformations`
are a `scale` (the voxel size) and an optional `translation`, axes z, y, x, in nm (other length
units are converted). A `coordinateTransformations` list on the multiscale itself applies after
the level's own, as 0.4 specifies. The translation is the centre of voxel 0 (the EM pyramids
prove it: each coarser level is shifted by half a finer voxel), so voxel i covers
[translation + (i - 1/2) * scale, translation + (i + 1/2) * scale).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from cellmapseg.errors import InputError

AXES: tuple[str, str, str] = ("z", "y", "x")
UNIT_NM: dict[str, float] = {"nanometer": 1.0, "nm": 1.0, "micrometer": 1e3, "um": 1e3,
                             "angstrom": 0.1, "picometer": 1e-3, "millimeter": 1e6}
VERSION = "0.4"

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Level:
    """One array of a multiscale group and the world grid (nm, z y x) it samples."""

    path: str  # the array's name inside the group, e.g. "s0"
    voxel_size: Triple
    translation: Triple  # centre of voxel (0, 0, 0)
    shape: tuple[int, int, int]

    @property
    def start(self) -> np.ndarray:
        """World coordinate of the grid's low corner (the first voxel's outer edge)."""
        return np.asarray(self.translation) - np.asarray(self.voxel_size) / 2

    @property
    def stop(self) -> np.ndarray:
        return self.start + np.asarray(self.voxel_size) * np.asarray(self.shape)

    @property
    def extent(self) -> str:
        """The box in words, for messages: [z0, y0, x0]-[z1, y1, x1] nm."""
        return f"{_nm(self.start)}-{_nm(self.stop)} nm"


def _nm(values: Sequence[float] | np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def describe(group: zarr.Group) -> str:
    """The group's location for messages: the store's root plus the group's path."""
    root = str(group.store).removeprefix("file://").rstrip("/")
    return f"{root}/{group.path}" if group.path else root


def is_multiscale(node: Any) -> bool:
    return isinstance(node, zarr.Group) and "multiscales" in node.attrs


def levels(group: zarr.Group, where: str | None = None) -> list[Level]:
    """Every level of the group's first multiscale, in metadata order. InputError (one line,
    naming `where` or the group) for missing or malformed metadata or a missing array."""
    where = where or describe(group)
    if not isinstance(group, zarr.Group):
        raise InputError(f"{where}: is an array, not an OME-NGFF multiscale group")
    multiscales = group.attrs.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or \
            not isinstance(multiscales[0], dict):
        raise InputError(f"{where}: not an OME-NGFF multiscale group (no 'multiscales' "
                         "attribute)")
    meta = multiscales[0]
    factor = _axis_units(meta.get("axes"), where)
    datasets = meta.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise InputError(f"{where}: multiscales[0].datasets is missing or empty")
    outer = _transform(meta.get("coordinateTransformations", []), where, "multiscales[0]",
                       required=False)
    return [_level(group, ds, i, factor, outer, where) for i, ds in enumerate(datasets)]


def _axis_units(axes: Any, where: str) -> float:
    """nm per unit of the axes (z, y, x in that order, one length unit)."""
    if axes is None:
        return 1.0  # 0.4 requires axes; older writers omit them and mean z, y, x in nm
    names = [a.get("name") if isinstance(a, dict) else a for a in axes]
    if tuple(names) != AXES:
        raise InputError(f"{where}: multiscales[0].axes are {names}, expected z, y, x")
    units = {a.get("unit") for a in axes if isinstance(a, dict)} - {None}
    if len(units) > 1 or not units <= UNIT_NM.keys():
        raise InputError(f"{where}: multiscales[0].axes units {sorted(units)} are not one "
                         f"length unit of {sorted(UNIT_NM)}")
    return UNIT_NM[units.pop()] if units else 1.0


def _transform(items: Any, where: str, key: str, required: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, translation) of a coordinateTransformations list."""
    scale, translation = np.ones(3), np.zeros(3)
    if not isinstance(items, list):
        raise InputError(f"{where}: {key}.coordinateTransformations is not a list")
    kinds = [t.get("type") if isinstance(t, dict) else None for t in items]
    if required and "scale" not in kinds:
        raise InputError(f"{where}: {key}.coordinateTransformations has no scale")
    for item, kind in zip(items, kinds, strict=True):
        if kind not in ("scale", "translation"):
            raise InputError(f"{where}: {key}.coordinateTransformations holds a {kind!r} "
                             "transformation (only scale and translation are supported)")
        values = _triple(item.get(kind), where, f"{key} {kind}")
        if kind == "scale":
            scale = values
        else:
            translation = values
    if not (scale > 0).all():
        raise InputError(f"{where}: {key} scale {scale.tolist()} is not positive")
    return scale, translation


def _triple(value: Any, where: str, key: str) -> np.ndarray:
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in value)
    if not ok:
        raise InputError(f"{where}: {key} {value!r} is not three finite numbers (z, y, x)")
    return np.asarray(value, dtype=np.float64)


def _level(group: zarr.Group, ds: Any, i: int, factor: float,
           outer: tuple[np.ndarray, np.ndarray], where: str) -> Level:
    key = f"multiscales[0].datasets[{i}]"
    if not isinstance(ds, dict) or not isinstance(ds.get("path"), str):
        raise InputError(f"{where}: {key} has no path")
    scale, translation = _transform(ds.get("coordinateTransformations"), where, key,
                                    required=True)
    scale, translation = scale * outer[0], translation * outer[0] + outer[1]
    try:
        array = group[ds["path"]]
    except KeyError:
        raise InputError(f"{where}/{ds['path']}: array listed in {key} is missing") from None
    if not isinstance(array, zarr.Array) or array.ndim != 3:
        raise InputError(f"{where}/{ds['path']}: {key} is not a 3-D array (z, y, x)")
    return Level(ds["path"], _floats(scale * factor), _floats(translation * factor),
                 tuple(int(n) for n in array.shape))


def _floats(values: np.ndarray) -> Triple:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def finest(group: zarr.Group, where: str | None = None) -> Level:
    """The level with the smallest voxel volume (not necessarily s0 or the first listed)."""
    return min(levels(group, where), key=lambda lv: float(np.prod(lv.voxel_size)))


def level_at(group: zarr.Group, voxel_size: Sequence[float], where: str | None = None,
             rtol: float = 1e-3) -> Level:
    """The level whose voxel size equals `voxel_size` (nm, z y x) within `rtol`; InputError
    naming the group and listing the available voxel sizes otherwise."""
    where = where or describe(group)
    found = levels(group, where)
    for level in found:
        if np.allclose(level.voxel_size, voxel_size, rtol=rtol, atol=0.0):
            return level
    have = "; ".join(f"{lv.path} {_nm(lv.voxel_size)}" for lv in found)
    raise InputError(f"{where}: no level at voxel size {_nm(voxel_size)} nm (levels: {have})")


def multiscale_attrs(paths: Sequence[str], voxel_sizes: Sequence[Sequence[float]],
                     translations: Sequence[Sequence[float]], name: str = "") -> dict[str, Any]:
    """The `multiscales` attribute of levels `paths` (nm, z y x)."""
    datasets = [{"path": p, "coordinateTransformations": [
        {"type": "scale", "scale": [float(v) for v in vs]},
        {"type": "translation", "translation": [float(t) for t in tr]}]}
        for p, vs, tr in zip(paths, voxel_sizes, translations, strict=True)]
    return {"multiscales": [{
        "version": VERSION, "name": name,
        "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in AXES],
        "datasets": datasets}]}


def write_multiscale(group: zarr.Group, arrays_by_level: Mapping[str, np.ndarray],
                     voxel_sizes: Sequence[Sequence[float]],
                     translations: Sequence[Sequence[float]],
                     chunks: int | Sequence[int] = 64) -> dict[str, zarr.Array]:
    """Write each array as a level of `group` (in mapping order, "/"-separated chunk keys as
    NGFF 0.4 asks of Zarr v2) and the group's multiscales attribute; return the arrays."""
    written = {}
    for path, data in arrays_by_level.items():
        data = np.asarray(data)
        shape_chunks = tuple(min(c, n) for c, n in zip(
            (chunks,) * 3 if isinstance(chunks, int) else chunks, data.shape, strict=True))
        array = group.create_array(path, shape=data.shape, dtype=data.dtype,
                                   chunks=shape_chunks, fill_value=0, overwrite=True,
                                   chunk_key_encoding={"name": "v2", "separator": "/"})
        array[...] = data
        written[path] = array
    group.attrs.update(multiscale_attrs(list(arrays_by_level), voxel_sizes, translations,
                                        name=group.basename or ""))
    return written
