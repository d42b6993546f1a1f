"""Shared fixtures: small NIfTI crops and datalists written into tmp_path.

`make_dataset(root, n_train=3, n_val=1, **overrides)` writes a valid dataset in the real layout
(images/<crop>_0000.nii.gz float32, labels/<crop>.nii.gz uint8, 8 nm spacing) and returns the
datalist path. Per-crop `crops={index: {...}}` overrides replace arrays, spacing or fields so a
test can plant exactly one problem.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from cellmapseg.classes import Ontology
from cellmapseg.config import from_dict as _config_from_dict

# The default ontology (the spec's 14 atomic classes, label values 1-14, groups mito/golgi/ves/
# endo; nuc, mito, ves, endo scored as instances): what every test not about ontologies uses.
ONTOLOGY: Ontology = _config_from_dict({}).classes
ATOMIC: tuple[str, ...] = ONTOLOGY.atomic  # channel c predicts ATOMIC[c]
NUM_CHANNELS: int = ONTOLOGY.num_channels

SPACING = (8.0, 8.0, 8.0)
# The smallest SegResNetDS that trains end to end in seconds on a CPU (see tiny_model).
TINY_MODEL: dict[str, Any] = {
    "network": {"type": "segresnet", "init_filters": 4, "blocks_down": [1, 1, 1]},
    "ds_weights": [1.0, 0.5], "roi_size": [16, 16, 16], "num_samples": 2, "batch_size": 2,
    "train_sub_epochs": 2, "epochs": 1, "eval_epochs": 1, "mixup_p": 0.0,
}
SHAPE = (16, 20, 24)
ANNOTATED = "0,1,2,3,7,8,9,10,11,12"


def tiny_model(**fields: Any) -> dict[str, Any]:
    """A fresh copy of TINY_MODEL with `fields` overriding its keys."""
    return {**copy.deepcopy(TINY_MODEL), **copy.deepcopy(fields)}


def write_nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...] = SPACING) -> Path:
    """Save `array` with an axis-aligned affine diag(spacing, 1) (dtype kept as given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


def crop_names(n: int) -> list[str]:
    """Names in the challenge's form; two datasets so grouping by dataset has something to do."""
    return [f"jrc_test-{i % 2 + 1}a_crop{100 + i}" for i in range(n)]


def random_image(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Integer-valued float32 in [0, 252], like the challenge's EM images."""
    return rng.integers(0, 253, size=shape).astype(np.float32)


def random_label(shape: tuple[int, ...], annotated: str, rng: np.random.Generator) -> np.ndarray:
    """uint8 values 0 or the label value of annotated channels c only (c + 1 by default)."""
    channels = [int(c) for c in annotated.split(",") if c.strip()]
    values = np.array([0, *[ONTOLOGY.labels[c] for c in channels]], dtype=np.uint8)
    return values[rng.integers(0, len(values), size=shape)]


def make_dataset_files(
    root: Path,
    n_train: int = 3,
    n_val: int = 1,
    *,
    shape: tuple[int, int, int] = SHAPE,
    spacing: tuple[float, float, float] = SPACING,
    annotated_classes: str = ANNOTATED,
    relative: bool = False,
    seed: int = 0,
    crops: dict[int, dict[str, Any]] | None = None,
    **datalist_fields: Any,
) -> Path:
    """Write crops + datalist.json under `root`; return the datalist path.

    crops[i] (i counts training then validation) may set: "image"/"label" (arrays),
    "image_spacing"/"label_spacing", "annotated_classes", "name", or "entry" (dict merged into
    the datalist entry). `datalist_fields` are merged into the top-level datalist object.
    """
    rng = np.random.default_rng(seed)
    crops = crops or {}
    entries = []
    for index, name in enumerate(crop_names(n_train + n_val)):
        over = crops.get(index, {})
        name = over.get("name", name)
        annotated = over.get("annotated_classes", annotated_classes)
        image = over.get("image")
        image = random_image(shape, rng) if image is None else image
        label = over.get("label")
        label = random_label(image.shape, annotated, rng) if label is None else label
        image_rel = Path("images") / f"{name}_0000.nii.gz"
        label_rel = Path("labels") / f"{name}.nii.gz"
        write_nifti(root / image_rel, image, over.get("image_spacing", spacing))
        write_nifti(root / label_rel, label, over.get("label_spacing", spacing))
        entry = {
            "image": str(image_rel if relative else root / image_rel),
            "label": str(label_rel if relative else root / label_rel),
            "annotated_classes": annotated,
        }
        entries.append({**entry, **over.get("entry", {})})
    datalist = {
        "name": "test", "description": "synthetic test crops", "modality": "EM",
        "sigmoid": True, "num_classes": NUM_CHANNELS,
        "training": entries[:n_train], "validation": entries[n_train:],
        **datalist_fields,
    }
    return write_json(root / "datalist.json", datalist)


@pytest.fixture
def make_dataset() -> Callable[..., Path]:
    """Factory: make_dataset(tmp_path, n_train=3, n_val=1, **overrides) -> datalist path."""
    return make_dataset_files


@pytest.fixture
def nifti_writer() -> Callable[..., Path]:
    """write_nifti(path, array, spacing=(8, 8, 8)) -> path."""
    return write_nifti


@pytest.fixture
def json_writer() -> Callable[[Path, Any], Path]:
    return write_json


@pytest.fixture(scope="session")
def synthetic_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic generator's crops at ~96^3 (about 10 M voxels, 20 MB compact: large enough
    that per-process noise of a few hundred KB does not blur memory measurements), validated
    into an inventory CSV. Built once per test session."""
    from cellmapseg.config import from_dict
    from cellmapseg.synthetic.generate import generate

    root = tmp_path_factory.mktemp("synthetic96")
    syn = {"n_train": 8, "n_val": 2, "shape": [96, 96, 96], "large_shape": [128, 128, 128],
           "small_shape": [24, 96, 96], "seed": 3}
    datalist = generate(from_dict({"data": {"synthetic": syn}}).data.synthetic, SPACING,
                        root / "data", ONTOLOGY)
    from cellmapseg.data.inventory import write_inventory

    cfg = from_dict({"data": {"datalist": str(datalist)}})
    write_inventory(cfg, root / "inventory.csv")
    return root / "inventory.csv"


# --- the whole workflow on the embedded default, once per session (tests/slurm_cluster.py) ------

@pytest.fixture(scope="session")
def slurm_cluster():
    """The test Slurm (tests/slurm_cluster.py), started on first use and stopped by PID at the end
    of the session; None when it cannot run here (not root, or CELLMAPSEG_SLURM=0) and
    CELLMAPSEG_REQUIRE_SLURM is unset (slurm_cluster.shared_skip_reason() says why). Raises when
    required and impossible."""
    import slurm_cluster as sc

    try:
        yield sc.shared_cluster()
    finally:
        sc.stop_shared_cluster()


@pytest.fixture(scope="session")
def embedded_dag(tmp_path_factory: pytest.TempPathFactory, slurm_cluster) -> Any:
    """`snakemake all` on the embedded default (with slurm_cluster.DAG_CONFIGS' shorter
    training), run once: through the test Slurm with
    profiles/slurm when it can start (DagRun.via_slurm), else locally with --cores 2
    (DagRun.skip_reason says why). Returns a slurm_cluster.DagRun; the cluster stays up until
    the session ends, so tests can query sacct (DagRun.cluster)."""
    import slurm_cluster as sc

    return sc.run_embedded_dag(tmp_path_factory.mktemp("embedded_dag"))


@pytest.fixture(scope="session")
def probe_stages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir whose data and probe stages (up to results/probe/caching_strategy.json) are done
    on the embedded default with slurm_cluster.DAG_CONFIGS. The session's embedded DAG when it
    has already run and passed (its stages are the same, and redoing them costs half a minute),
    else a local run of just these stages. Treat it as read-only: link its results/data and
    results/probe into a new workdir."""
    import slurm_cluster as sc

    dag = sc.finished_dag()
    if dag is not None and dag.returncode == 0:
        return dag.workdir
    workdir = tmp_path_factory.mktemp("probe_stages")
    proc = sc.run_local(workdir, "results/probe/caching_strategy.json",
                        configfiles=sc.DAG_CONFIGS)  # the DAG's config, as when it is reused
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return workdir


def tiny_training_inputs(root: Path, strategy: str = "B", seed: int | None = None,
                         data_seed: int = 5, **synthetic) -> dict:
    """A small synthetic dataset (4 training crops, 1 validation crop of about 24^3 voxels
    unless `synthetic` says otherwise), its inventory (root/inventory.csv) and a caching
    decision for `strategy` (root/caching.json); returns the raw config that reads them."""
    from cellmapseg.config import from_dict
    from cellmapseg.data.inventory import write_inventory
    from cellmapseg.synthetic.generate import generate

    syn = {"n_train": 4, "n_val": 1, "shape": [24, 24, 24], "large_shape": [28, 28, 28],
           "small_shape": [12, 24, 24], "seed": data_seed, **synthetic}
    raw: dict = {"data": {"synthetic": syn}} if seed is None else {"seed": seed,
                                                                     "data": {"synthetic": syn}}
    made = from_dict(raw)
    raw["data"]["datalist"] = str(generate(made.data.synthetic, (8.0,) * 3, root / "data",
                                           made.classes))
    write_inventory(from_dict(raw), root / "inventory.csv")
    (root / "caching.json").write_text(json.dumps(
        {"strategy": strategy, "store_dir": str(root / "shm"), "disk_dir": str(root / "disk"),
         "d_threshold_mb": 500}))
    return raw


def tiny_two_rank_job(root: Path, model: dict, data_seed: int, seed: int | None = None) -> Path:
    """tiny_training_inputs (3 training crops) and a 2-rank CPU config with one model `tiny`,
    all under `root`, for tests that start the real training ranks."""
    import yaml

    raw = tiny_training_inputs(root, seed=seed, data_seed=data_seed, n_train=3)
    cfg = {**raw, "train": {"cpu_ranks": 2, "num_workers": 1}, "models": {"tiny": model}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root
