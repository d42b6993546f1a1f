"""Challenge crops in the Zarr layout: a synthetic dataset written by synthetic.zarr_layout reads
back exactly at the training voxel size (EM region, label downsampled by the documented rule,
annotated classes from cellmap-schemas metadata), EM reads touch only the crop's chunks, thin
membranes survive 4 -> 8 nm and 2 -> 8 nm, and each bad input is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import ONTOLOGY
from zarr.storage import LocalStore

from cellmapseg.data import zarr_crops as zc
from cellmapseg.data.manifest import read_manifest
from cellmapseg.data.ngff import level_at
from cellmapseg.errors import InputError
from cellmapseg.synthetic.zarr_layout import (
    UNKNOWN,
    LabelCrop,
    UnlabelledCrop,
    ZarrDataset,
    write_dataset,
    write_manifests,
)

DATASET = "jrc_synth-1"
EM_VS = (8.0, 8.0, 8.0)  # EM s0 = the training voxel size; s1 is 16 nm
FINE = (4.0, 4.0, 4.0)
EM_SHAPE = (12, 14, 16)
EM_CHUNK = 4
ECS, MITO_LUM, MITO_MEM = (ONTOLOGY.channel(n) for n in ("ecs", "mito_lum", "mito_mem"))
V = {n: ONTOLOGY.labels[ONTOLOGY.channel(n)] for n in ONTOLOGY.atomic}


def edge_translation(cell: tuple[float, ...], fine_offset: tuple[int, ...] = (0, 0, 0)
                     ) -> tuple[float, ...]:
    """Translation (first voxel's centre) of a 4 nm crop whose first voxel edge lies
    `fine_offset` 4 nm voxels past the edge of 8 nm EM voxel `cell` (EM voxel 0 is centred at
    0 nm, so its edges are at -4 + 8 i)."""
    return tuple(-4.0 + 8 * c + 4 * o + 2.0 for c, o in zip(cell, fine_offset, strict=True))


def kron2(coarse: np.ndarray) -> np.ndarray:
    return np.kron(coarse, np.ones((2, 2, 2), coarse.dtype))


# Crop 1: on the EM grid at EM voxels [2:6, 3:8, 4:10]; every 8 nm voxel holds one class only,
# so the label at 8 nm is the coarse array itself.
LUMEN = np.zeros((4, 5, 6), np.uint8)
LUMEN[1:3, 1:4, 1:5] = 1
ECS_C = (1 - LUMEN) * (np.arange(6) < 5)  # x = 5 holds no class: background
CROP1_BOX = (slice(2, 6), slice(3, 8), slice(4, 10))


def crop1() -> LabelCrop:
    er_lum = np.zeros((8, 10, 12), np.uint8)
    er_lum[0, 0, :4] = UNKNOWN
    return LabelCrop(1, FINE, edge_translation((2, 3, 4)), {
        "ecs": kron2(ECS_C), "mito_lum": kron2(LUMEN), "er_lum": er_lum,
        "mito": kron2(LUMEN),  # a group class: held, not an atomic class of the ontology
    }, unknown=("er_mem",))


# Crop 2: starts half an 8 nm voxel into EM voxel x = 4 (fine x = 0 is the covered half of it).
# The lumen fills fine x 0-4, less one voxel in four of the x = 0 layer; ecs the rest.
def crop2() -> LabelCrop:
    lumen = np.zeros((4, 6, 11), np.uint8)
    lumen[:, :, :5] = 1
    lumen[1::2, 1::2, 0] = 0
    return LabelCrop(2, FINE, edge_translation((2, 3, 4), (0, 0, 1)),
                     {"mito_lum": lumen, "ecs": (lumen == 0).astype(np.uint8) *
                      (np.arange(11) > 0)})


@pytest.fixture
def em() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, EM_SHAPE, dtype=np.uint8)


def make(root: Path, em: np.ndarray, crops=None, test_crops=None, **kw) -> Path:
    ds = ZarrDataset(DATASET, em, EM_VS, crops=tuple(crops or (crop1(), crop2())),
                     test_crops=tuple(test_crops or (
                         UnlabelledCrop(9, FINE, edge_translation((1, 1, 1)), (4, 4, 4),
                                        ("mito", "ecs")),)))
    return write_dataset(root, ds, chunks=kw.get("chunks", EM_CHUNK))


@pytest.fixture
def root(tmp_path, em) -> Path:
    make(tmp_path, em)
    return tmp_path


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert len(text.splitlines()) == 1, text
    return text


def read(root: Path, crop="1", voxel_size=EM_VS, **kw) -> zc.TrainingCrop:
    return zc.read_training_crop(root, DATASET, crop, ONTOLOGY, voxel_size, **kw)


def edit_attrs(path: Path, edit) -> None:
    attrs = json.loads((path / ".zattrs").read_text())
    edit(attrs)
    (path / ".zattrs").write_text(json.dumps(attrs))


def crop_dir(root: Path, crop: int = 1) -> Path:
    return zc.dataset_path(root, DATASET) / zc.GROUNDTRUTH_PATH / f"crop{crop}"


# ------------------------------------------------------------------------------ read back
def test_a_written_crop_reads_back_exactly(root, em):
    got = read(root)
    np.testing.assert_array_equal(got.image, em[CROP1_BOX])
    expected = np.where(LUMEN == 1, V["mito_lum"], np.where(ECS_C == 1, V["ecs"], 0))
    np.testing.assert_array_equal(got.label, expected)
    assert got.label.dtype == np.uint8
    assert got.geometry == zc.CropGeometry(EM_VS, (16.0, 24.0, 32.0), (4, 5, 6))
    assert (got.dataset, got.crop) == (DATASET, "crop1")


def test_annotated_classes_come_from_the_metadata(root):
    plan = zc.plan_crop(root, DATASET, 1, ONTOLOGY, EM_VS)
    assert plan.annotated == (ECS, MITO_LUM)  # channel order; nuc etc. are not held
    assert dict(plan.skipped) == {"er_lum": "4 of 960 voxels unknown",
                                  "er_mem": "unknown everywhere"}
    names = zc.crop_class_names(zarr.open_group(crop_dir(root), mode="r"), "crop1")
    assert names == ("ecs", "mito_lum", "er_lum", "mito", "er_mem")


def test_a_crop_inside_a_training_voxel_is_labelled_from_the_part_it_covers(root, em):
    got = read(root, crop=2)
    assert got.geometry.shape == (2, 3, 6)  # x: half of EM voxel 4, then EM voxels 5-9
    np.testing.assert_array_equal(got.image, em[2:4, 3:6, 4:10])
    # x = 0: the lumen holds 3 of the 4 covered fine voxels (3/8 of the whole voxel, which
    # would lose to background were the uncovered half counted)
    expected_x = [V["mito_lum"], V["mito_lum"], V["mito_lum"], V["ecs"], V["ecs"], V["ecs"]]
    np.testing.assert_array_equal(got.label, np.broadcast_to(expected_x, (2, 3, 6)))


def test_groups_without_cellmap_metadata_read_as_the_challenge_loader_reads_them(root):
    edit_attrs(crop_dir(root), lambda a: a.pop("cellmap"))
    edit_attrs(crop_dir(root) / "ecs", lambda a: a.pop("cellmap"))
    edit_attrs(crop_dir(root) / "ecs" / "s0", lambda a: a.pop("cellmap"))
    plan = zc.plan_crop(root, DATASET, "crop1", ONTOLOGY, EM_VS)
    assert plan.sources[0].annotation == zc.PLAIN  # exists, so annotated; > 0 is present
    assert plan.annotated == (ECS, MITO_LUM)  # class_names gone: the subgroups are held
    assert "er_mem" in dict(plan.skipped)


def test_test_crops_have_em_but_no_labels_and_both_manifests_parse(root, tmp_path, em):
    ds = ZarrDataset(DATASET, em, EM_VS, crops=(crop1(), crop2()), test_crops=(
        UnlabelledCrop(9, FINE, edge_translation((1, 1, 1)), (4, 4, 4), ("mito", "ecs")),))
    write_manifests(tmp_path / "train.csv", tmp_path / "test.csv", [ds])
    train = read_manifest(tmp_path / "train.csv")
    assert [(r.crop, r.dataset, r.class_label) for r in train] == [
        ("1", DATASET, "ecs"), ("1", DATASET, "mito_lum"), ("1", DATASET, "er_lum"),
        ("1", DATASET, "mito"), ("2", DATASET, "mito_lum"), ("2", DATASET, "ecs")]
    assert train[0].grid.voxel_size == FINE and train[0].grid.shape == (8, 10, 12)
    assert train[0].grid.translation == edge_translation((2, 3, 4))
    assert (tmp_path / "train.csv").read_text().splitlines()[1] == \
        f"1,{DATASET},ecs,[4.0;4.0;4.0],[14.0;22.0;30.0],[8;10;12]"
    test = read_manifest(tmp_path / "test.csv")
    assert [(r.crop, r.class_label) for r in test] == [("9", "mito"), ("9", "ecs")]
    assert not crop_dir(root, 9).exists()
    em_group = zarr.open_group(zc.dataset_path(root, DATASET) / zc.EM_PATH, mode="r")
    grid = test[0].grid
    box = zc.em_box(zc.CropGeometry(grid.voxel_size, grid.translation, grid.shape),
                    level_at(em_group, EM_VS), DATASET, "crop9")
    assert box == (slice(1, 3), slice(1, 3), slice(1, 3))


# --------------------------------------------------------------------------- chunk reads
def guarded_store(root: Path, prefix: str, allowed: set[str], seen: list[str]) -> LocalStore:
    """A read-only store whose get() refuses every chunk of `prefix` outside `allowed`."""

    class Guard(LocalStore):
        async def get(self, key, prototype=None, byte_range=None):
            if key.startswith(prefix) and not key.rsplit("/", 1)[-1].startswith("."):
                chunk = key[len(prefix):]
                seen.append(chunk)
                if chunk not in allowed:
                    raise AssertionError(f"read outside the crop: {key}")
            return await super().get(key, prototype, byte_range)

    return Guard(root, read_only=True)


def test_the_em_region_is_read_from_the_chunks_it_overlaps_only(root, em):
    plan = zc.plan_crop(root, DATASET, 1, ONTOLOGY, EM_VS)
    assert plan.box == CROP1_BOX
    ranges = [range(s.start // EM_CHUNK, -(-s.stop // EM_CHUNK)) for s in plan.box]
    allowed = {f"{z}/{y}/{x}" for z in ranges[0] for y in ranges[1] for x in ranges[2]}
    seen: list[str] = []
    store = guarded_store(zc.dataset_path(root, DATASET), f"{zc.EM_PATH}/s0/", allowed, seen)
    array = zarr.open_group(store, mode="r", zarr_format=2)[f"{zc.EM_PATH}/s0"]
    np.testing.assert_array_equal(zc.read_em_region(array, plan.box, "em"), em[CROP1_BOX])
    assert set(seen) == allowed and len(allowed) == 8  # of the array's 3 x 4 x 4 chunks
    with pytest.raises(InputError, match="read outside the crop"):  # the guard does guard
        zc.read_em_region(array, (slice(2, 9), *plan.box[1:]), "em")


# ------------------------------------------------------------------------ labels to grid
def source(name: str, channel: int, fine: np.ndarray, down=(2, 2, 2), up=(1, 1, 1),
           offset=(0, 0, 0)) -> zc.ClassSource:
    return zc.ClassSource(name, channel, channel + 1, fine.astype(np.uint8), name, zc.PLAIN,
                          down, up, offset)


def block_mean(fine: np.ndarray, f: int) -> np.ndarray:
    """The plain rule: fraction of each f-block, >= 0.5."""
    n = np.asarray(fine.shape) // f
    return fine.reshape(n[0], f, n[1], f, n[2], f).mean(axis=(1, 3, 5)) >= 0.5


def test_a_one_voxel_membrane_between_lumen_and_ecs_survives_4_to_8_nm():
    z = np.arange(8)[:, None, None] * np.ones((1, 8, 8), int)
    lumen, mem, ecs = z < 3, z == 3, z > 3  # the membrane shares 8 nm voxel z = 1 with lumen
    label, _ = zc.grid_label([source("lum", 0, lumen), source("mem", 1, mem),
                              source("ecs", 2, ecs)], (4, 4, 4))
    np.testing.assert_array_equal(label[:, 0, 0], [1, 2, 3, 3])  # lumen, membrane, ecs, ecs
    assert (label == label[:, :1, :1]).all()
    assert block_mean(lumen, 2)[1].all()  # the block mean keeps lumen there too: a tie


def test_an_oblique_one_voxel_membrane_stays_closed_at_8_nm():
    y, x = np.mgrid[0:16, 0:16]
    height = np.rint(2 + 0.35 * x + 0.2 * y).astype(int)  # one voxel per (y, x) column
    mem = np.zeros((16, 16, 16), bool)
    mem[height, y, x] = True
    label, _ = zc.grid_label([source("mem", 0, mem)], (8, 8, 8))
    columns = (label == 1).sum(axis=0)
    assert (columns >= 1).all() and (columns <= 2).all()  # no hole, at most two voxels thick
    plain = block_mean(mem, 2).sum(axis=0)
    assert (plain == 0).any()  # the plain block mean punches holes into the same membrane


def test_a_two_voxel_membrane_split_across_voxels_survives_2_to_8_nm():
    mem = np.zeros((16, 8, 8), bool)
    mem[7:9] = True  # 1/4 of 8 nm voxel z = 1 and 1/4 of z = 2
    label, _ = zc.grid_label([source("mem", 0, mem, down=(4, 4, 4))], (4, 2, 2))
    np.testing.assert_array_equal(label[:, 0, 0], [0, 1, 1, 0])
    assert not block_mean(mem, 4).any()


def test_thick_classes_are_not_dilated_but_thin_ones_are_kept_at_a_quarter():
    lumen = np.zeros((16, 16, 16), bool)
    lumen[:5, :5, :] = True  # 5 fine voxels thick: it has an interior
    sheet = np.zeros((16, 16, 16), bool)
    sheet[13, :9, 8:] = True  # thin; ends at fine y = 8, a quarter of 8 nm voxel (6, 4)
    label, _ = zc.grid_label([source("lum", 0, lumen), source("sheet", 1, sheet)], (8, 8, 8))
    assert label[1, 1, 0] == 1 and label[2, 1, 0] == 1  # full and half voxels
    assert label[2, 2, 0] == 0  # a quarter of a thick class: background wins
    assert (label[6, :5, 4:] == 2).all()  # the sheet, its quarter voxel y = 4 included
    assert (label[6, 5:, :] == 0).all() and (label[6, :, :4] == 0).all()


def test_the_label_does_not_depend_on_the_block_size():
    rng = np.random.default_rng(3)
    zz, yy, xx = np.mgrid[0:20, 0:24, 0:28]
    blobs = np.zeros((20, 24, 28), bool)
    for c in rng.uniform(0, 24, (6, 3)):
        blobs |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 16
    mem = np.zeros_like(blobs)
    mem[np.rint(3 + 0.4 * xx[0] + 0.3 * yy[0]).astype(int) % 20, yy[0], xx[0]] = True
    sources = [source("blobs", 0, blobs & ~mem), source("mem", 1, mem),
               source("ecs", 2, ~blobs & ~mem)]
    whole, seen = zc.grid_label(sources, (10, 12, 14), block=64)
    for block in (2, 3, 5):
        part, seen_part = zc.grid_label(sources, (10, 12, 14), block=block)
        np.testing.assert_array_equal(part, whole)
        assert {k: v.absent for k, v in seen_part.items()} == \
            {k: v.absent for k, v in seen.items()}
    assert seen["mem"].absent == mem.size - mem.sum()


def test_coarser_and_mixed_class_grids_map_by_whole_factors():
    coarse = (np.random.default_rng(1).random((3, 4, 5)) > 0.5)
    label, seen = zc.grid_label([source("nuc", 0, coarse, down=(1, 1, 1), up=(2, 2, 2))],
                                (6, 8, 10))
    np.testing.assert_array_equal(label, kron2(coarse.astype(np.uint8)))
    assert seen["nuc"].absent == coarse.size - coarse.sum()  # source voxels, not copies
    fine_yx = np.zeros((4, 8, 8), bool)
    fine_yx[:, 2:6, 2:6] = True  # z already at 8 nm, y and x at 4 nm
    label, _ = zc.grid_label([source("c", 0, fine_yx, down=(1, 2, 2))], (4, 4, 4))
    np.testing.assert_array_equal(label[0], np.pad(np.ones((2, 2), np.uint8), 1))


# ------------------------------------------------------------------------------- errors
def test_a_missing_dataset_is_one_line_naming_it(root):
    with pytest.raises(InputError) as exc:
        zc.read_training_crop(root, "jrc_nope", 1, ONTOLOGY, EM_VS)
    text = one_line(exc)
    assert "jrc_nope/jrc_nope.zarr" in text and "dataset jrc_nope not found" in text


def test_a_missing_crop_is_one_line_naming_crop_and_dataset(root):
    with pytest.raises(InputError) as exc:
        read(root, crop="9")  # a test crop: EM only
    text = one_line(exc)
    assert "groundtruth/crop9" in text and f"crop9 of dataset {DATASET} not found" in text


def test_a_missing_em_chunk_is_one_line_naming_the_array_and_chunk(root):
    (zc.dataset_path(root, DATASET) / zc.EM_PATH / "s0" / "0" / "0" / "1").unlink()
    with pytest.raises(InputError) as exc:
        read(root)
    text = one_line(exc)
    assert f"{DATASET}.zarr/{zc.EM_PATH}/s0" in text and "chunk 0/0/1" in text


def test_an_unreadable_em_chunk_is_one_line_naming_the_array(root):
    (zc.dataset_path(root, DATASET) / zc.EM_PATH / "s0" / "1" / "1" / "1").write_bytes(b"x")
    with pytest.raises(InputError) as exc:
        read(root)
    text = one_line(exc)
    assert f"{zc.EM_PATH}/s0: cannot read voxels [2:6, 3:8, 4:10]" in text


def test_a_missing_label_chunk_disagrees_with_the_counts_naming_the_array(root):
    (crop_dir(root) / "mito_lum" / "s0" / "1" / "1" / "1").unlink()
    with pytest.raises(InputError) as exc:
        read(root)
    text = one_line(exc)
    assert "crop1/mito_lum/s0: holds" in text and "complement_counts say" in text


def test_a_class_group_that_is_not_a_multiscale_is_one_line_naming_it(root):
    edit_attrs(crop_dir(root) / "mito_lum", lambda a: a.pop("multiscales"))
    with pytest.raises(InputError) as exc:
        read(root)
    text = one_line(exc)
    assert text.startswith(str(crop_dir(root).resolve() / "mito_lum") + ": ")
    assert "not an OME-NGFF multiscale" in text


def test_a_listed_class_without_a_group_is_one_line_naming_crop_and_class(root):
    edit_attrs(crop_dir(root), lambda a: a["cellmap"]["annotation"]["class_names"].append("pm"))
    with pytest.raises(InputError) as exc:
        read(root)
    assert "crop1: class pm listed in the crop's class_names not found" in one_line(exc)


def test_a_malformed_encoding_is_one_line_naming_the_group(root):
    edit_attrs(crop_dir(root) / "ecs", lambda a: a["cellmap"]["annotation"].update(
        annotation_type={"type": "semantic_segmentation", "encoding": {"maybe": 3}}))
    with pytest.raises(InputError) as exc:
        read(root)
    assert "crop1/ecs: attribute cellmap.annotation.annotation_type.encoding" in one_line(exc)


def test_em_without_the_training_voxel_size_is_refused_listing_its_levels(root):
    with pytest.raises(InputError) as exc:
        read(root, voxel_size=(4.0, 4.0, 4.0))
    text = one_line(exc)
    assert f"{DATASET}.zarr/{zc.EM_PATH}: no level at voxel size [4, 4, 4]" in text
    assert "s0 [8, 8, 8]; s1 [16, 16, 16]" in text


def test_a_non_integer_factor_is_refused_naming_crop_class_and_both_sizes(tmp_path, em):
    odd = LabelCrop(5, (3.0, 3.0, 3.0), (21.5, 21.5, 21.5), {"mito_lum": np.ones((8, 8, 8))})
    make(tmp_path, em, crops=[odd])
    with pytest.raises(InputError) as exc:
        read(tmp_path, crop=5)
    text = one_line(exc)
    assert f"{DATASET}.zarr/{zc.GROUNDTRUTH_PATH}/crop5: class mito_lum voxel size [3, 3, 3]" \
        in text and "training voxel size [8, 8, 8]" in text


def test_a_crop_outside_the_em_is_one_line_naming_crop_dataset_and_both_extents(tmp_path, em):
    late = LabelCrop(6, FINE, edge_translation((2, 2, 14)), {"ecs": np.ones((4, 4, 8))})
    make(tmp_path, em, crops=[late])
    with pytest.raises(InputError) as exc:
        read(tmp_path, crop=6)
    text = one_line(exc)
    assert f"dataset {DATASET} crop6" in text
    assert "[12, 12, 108]-[28, 28, 140] nm" in text and "[-4, -4, -4]-[92, 108, 124] nm" in text


def test_a_crop_off_the_em_grid_is_one_line_naming_dataset_and_crop(root):
    def shift(attrs):
        for ds in attrs["multiscales"][0]["datasets"]:
            ds["coordinateTransformations"][1]["translation"][2] += 1.0
    for name in ("ecs", "mito_lum", "er_lum", "er_mem"):
        edit_attrs(crop_dir(root) / name, shift)
    with pytest.raises(InputError) as exc:
        read(root)
    text = one_line(exc)
    assert f"dataset {DATASET} crop1: the crop grid" in text and "does not land" in text


def test_classes_covering_different_boxes_are_one_line_naming_both(root):
    def shift(attrs):
        attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][1][
            "translation"][0] += 8.0
    edit_attrs(crop_dir(root) / "mito_lum", shift)
    with pytest.raises(InputError) as exc:
        read(root)
    assert "crop1: class mito_lum covers" in one_line(exc)
