"""Bad-input matrix: every malformed input ends in one `error:` line that names the file, crop or
key, exit status 2, no traceback, and no output that Snakemake would take as complete.

Each case runs the real console entry (`cellmapseg.cli.main`: argument parsing, config loading,
the stage, `bad_input_exits`) in its own folder, with a small dataset from conftest's
`make_dataset_files` and a config that points data.datalist at it. Cases run in-process (the
console entry is the same function; `test_console_entry_is_what_a_user_sees` checks that a real
`python -m cellmapseg.cli` process prints the same) except where the failure happens inside a
torchrun rank, which needs real processes. tests/make_reliability_table.py runs the same table as
processes and prints the docs/reliability.md rows.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import ATOMIC, SHAPE, TINY_MODEL, crop_names, make_dataset_files, tiny_model

from cellmapseg import cli
from cellmapseg.config import from_dict
from cellmapseg.data.inventory import write_inventory
from cellmapseg.models import checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXIT_BAD_INPUT = 2
CROPS = crop_names(4)  # make_dataset_files' names: training 0-2, validation 3
BAD = CROPS[1]  # the crop a case breaks (training[1])
OUTPUTS = {  # what the stage writes that Snakemake (or the next stage) takes as complete
    "inventory": ("results/data/inventory.csv",),
    "train": ("results/tiny/train/summary.json", "results/tiny/train/metrics.csv"),
    "predict": ("results/tiny/predictions/predictions.zarr",
                "results/tiny/predictions/predictions.zarr.tmp",
                "results/tiny/predictions/manifest.json"),
}
# The file system's report of free space is the one thing faked in the store-full case: a
# sitecustomize on PYTHONPATH patches shutil.disk_usage (as test_caching.py monkeypatches it) in
# the stage process and in every torchrun rank, for paths under $CELLMAPSEG_TEST_FULL_DIR only.
FULL_DISK_SITECUSTOMIZE = '''\
import os
import shutil

_full = os.path.realpath(os.environ["CELLMAPSEG_TEST_FULL_DIR"])
_real = shutil.disk_usage


def _disk_usage(path):
    usage = _real(path)
    if os.path.realpath(path).startswith(_full):
        return type(usage)(usage.total, usage.total - 1000, 1000)
    return usage


shutil.disk_usage = _disk_usage
'''
# A folder name that a shell would split, unquote and execute; it must travel as one argument.
HOSTILE = "store dir 'q' \"dq\" $(touch pwned) `touch pwned2`"


# ---------------------------------------------------------------- the prepared folder


@dataclass(frozen=True)
class Base:
    """Shared by every case (never modified): a valid dataset, its inventory, a checkpoint."""

    root: Path
    datalist: Path
    inventory: Path
    checkpoint: Path
    network: dict[str, Any]


def prepare_base(root: Path) -> Base:
    root.mkdir(parents=True, exist_ok=True)
    datalist = make_dataset_files(root / "data")
    raw = base_config(datalist)
    cfg = from_dict(raw)
    write_inventory(cfg, root / "inventory.csv")
    network = checkpoint.identity(cfg.model("tiny").network.as_dict(), cfg.classes.atomic)
    ckpt = root / "best.pt"
    checkpoint.save(ckpt, {"model_name": "tiny", "network": network, "epoch": 1, "step": 3,
                           "best_score": 0.1, "model": {"w": torch.zeros(4096)}})
    return Base(root, datalist, root / "inventory.csv", ckpt, network)


def base_config(datalist: Path) -> dict[str, Any]:
    return {"data": {"datalist": str(datalist), "synthetic": {"enabled": False}},
            "train": {"num_workers": 0}, "models": {"tiny": tiny_model()}}


@dataclass
class World:
    """One case's folder (the stage's working directory) and the command line it runs."""

    root: Path
    base: Base
    stage: str
    configs: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, base: Base, stage: str) -> World:
        root.mkdir(parents=True, exist_ok=True)
        w = cls(root, base, stage, outputs=list(OUTPUTS[stage]))
        datalist = base.datalist
        if stage == "inventory":  # inventory cases break the data: each gets its own copy
            datalist = make_dataset_files(root / "data")
        else:
            w.args = ["--model", "tiny"]
            w.copy(base.inventory, "results/data/inventory.csv")
            w.write_json("results/probe/caching_strategy.json", {
                "strategy": "A", "store_dir": str(root / "shm"), "disk_dir": str(root / "disk"),
                "d_threshold_mb": 500})
        if stage == "predict":
            w.copy(base.checkpoint, "results/tiny/train/checkpoints/best.pt")
            w.write_json("results/tiny/train/summary.json",
                         {"model": "tiny", "checkpoint": "checkpoints/best.pt"})
        w.configs = [str(w.write_yaml("config.yaml", base_config(datalist)))]
        return w

    # -- helpers the cases use
    def path(self, rel: str) -> Path:
        return self.root / rel

    def copy(self, src: Path, rel: str) -> None:
        self.path(rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, self.path(rel))

    def write_json(self, rel: str, obj: Any) -> Path:
        self.path(rel).parent.mkdir(parents=True, exist_ok=True)
        self.path(rel).write_text(json.dumps(obj))
        return self.path(rel)

    def write_yaml(self, rel: str, obj: Any) -> Path:
        self.path(rel).write_text(yaml.safe_dump(obj))
        return self.path(rel)

    def override(self, obj: dict[str, Any]) -> None:
        """A second -c file merged over the first, as a user overrides the shipped config."""
        self.configs.append(str(self.write_yaml("override.yaml", obj)))

    def edit_datalist(self, change: Callable[[dict[str, Any]], Any]) -> None:
        path = self.path("data/datalist.json")
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    def dataset(self, **overrides: Any) -> None:
        """Rewrite the dataset with make_dataset_files overrides (e.g. one crop's arrays)."""
        make_dataset_files(self.path("data"), **overrides)

    def nifti(self, crop: str, field: str) -> Path:
        sub, suffix = ("images", "_0000.nii.gz") if field == "image" else ("labels", ".nii.gz")
        return self.path(f"data/{sub}/{crop}{suffix}")

    def argv(self) -> list[str]:
        return [*(a for c in self.configs for a in ("-c", c)), self.stage, *self.args]


# ---------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    setup: Callable[[World], Any]
    expect: tuple[str, ...]  # each must occur in the error line(s): the name and the problem
    lines: int = 1  # error lines (several only where several problems are reported together)
    process: bool = False  # the failure happens in a torchrun rank: run real processes
    slow: bool = False


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _del(key: str, index: int | None = None, split: str = "training") -> Callable[[dict], None]:
    def change(data: dict) -> None:
        if index is None:
            del data[key]
        else:
            del data[split][index][key]
    return change


def _set_entry(index: int, key: str, value: Any) -> Callable[[dict], None]:
    return lambda data: data["training"][index].__setitem__(key, value)


def _duplicate(data: dict) -> None:
    data["training"][2] = copy.deepcopy(data["training"][0])


def _both_splits(data: dict) -> None:
    data["validation"][0] = copy.deepcopy(data["training"][1])


def _one_crop(**arrays: Any) -> Callable[[World], None]:
    return lambda w: w.dataset(crops={1: arrays})


def _nan_image() -> np.ndarray:
    image = np.ones(SHAPE, np.float32)
    image[2, 3, 4] = np.nan
    return image


def _store_full(w: World) -> None:
    """Strategy B into a store folder whose file system reports 1000 bytes free; the folder
    and the output folder carry shell metacharacters (they must reach torchrun as one argument
    each and never be executed)."""
    store = w.path(HOSTILE)
    store.mkdir()
    w.write_json("results/probe/caching_strategy.json", {
        "strategy": "B", "store_dir": str(store), "disk_dir": str(w.path("disk")),
        "d_threshold_mb": 500})
    site = w.path("site")
    site.mkdir()
    (site / "sitecustomize.py").write_text(FULL_DISK_SITECUSTOMIZE)
    w.env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                         os.environ.get("PYTHONPATH")])),
             "CELLMAPSEG_TEST_FULL_DIR": str(store)}
    out = f"results/tiny {HOSTILE}/train"
    w.args += ["--out", out]
    w.outputs = [f"{out}/summary.json", f"{out}/metrics.csv", f"{out}/checkpoints"]


def _checkpoint(**state: Any) -> Callable[[World], None]:
    def setup(w: World) -> None:
        full = {"model_name": "tiny", "network": w.base.network, "epoch": 1, "step": 3,
                "best_score": 0.1, "model": {"w": torch.zeros(8)}, **state}
        checkpoint.save(w.path("results/tiny/train/checkpoints/best.pt"), full)
    return setup


class _Payload:
    """Unpickling this would run a shell command: torch.load(weights_only=True) must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _pickled_object(w: World) -> None:
    torch.save({"format": checkpoint.FORMAT, "model_name": "tiny", "network": w.base.network,
                "model": {"w": _Payload(w.path("pwned"))}},
               w.path("results/tiny/train/checkpoints/best.pt"))


BEST = "results/tiny/train/checkpoints/best.pt"
CASES: list[Case] = [
    # --- datalist (inventory stage)
    Case("datalist-missing-file", "inventory",
         lambda w: w.override({"data": {"datalist": str(w.path("data/nope.json"))}}),
         ("nope.json: datalist not found",)),
    Case("datalist-not-json", "inventory",
         lambda w: w.path("data/datalist.json").write_text('{"training": ['),
         ("datalist.json: datalist is not valid JSON",)),
    Case("datalist-missing-key", "inventory", lambda w: w.edit_datalist(_del("validation")),
         ("datalist.json: missing key 'validation'",)),
    Case("datalist-missing-field", "inventory", lambda w: w.edit_datalist(_del("label", 1)),
         (f"training[1] (crop {BAD}): missing field 'label'",)),
    Case("datalist-wrong-type-classes", "inventory",
         lambda w: w.edit_datalist(_set_entry(1, "annotated_classes", [0, 1])),
         (f"(crop {BAD}) field 'annotated_classes': must be a string",)),
    Case("datalist-wrong-type-split", "inventory",
         lambda w: w.edit_datalist(lambda d: d.__setitem__("validation", {"image": "x"})),
         ("datalist.json: 'validation' must be a list of crops, got object",)),
    Case("datalist-duplicate-crop", "inventory", lambda w: w.edit_datalist(_duplicate),
         (f"training[2] (crop {CROPS[0]}): duplicate crop name, already at training[0]",)),
    Case("datalist-crop-in-both-splits", "inventory", lambda w: w.edit_datalist(_both_splits),
         (f"crop {BAD} is in both training (training[1]) and validation (validation[0])",)),
    Case("datalist-relative-paths-without-dataroot", "inventory",
         lambda w: w.dataset(relative=True),
         ("training[0]: field 'image' is a relative path", "no data.dataroot is configured",
          "(and 7 more relative paths)")),
    # --- NIfTI files (inventory stage)
    Case("nifti-missing", "inventory", lambda w: w.nifti(BAD, "label").unlink(),
         (f"crop {BAD}: label", f"{BAD}.nii.gz: file not found")),
    Case("nifti-empty-file", "inventory", lambda w: w.nifti(BAD, "image").write_bytes(b""),
         (f"crop {BAD}: image", "_0000.nii.gz: corrupt or truncated gzip header (empty file)")),
    Case("nifti-truncated-gzip", "inventory", lambda w: truncate(w.nifti(BAD, "image"), 0.6),
         (f"crop {BAD}: image", "_0000.nii.gz: corrupt or truncated gzip data")),
    Case("nifti-2d", "inventory", _one_crop(image=np.zeros(SHAPE[:2], np.float32),
                                            label=np.zeros(SHAPE, np.uint8)),
         (f"crop {BAD}: image", "must be a 3D volume, got 2D shape (16, 20)")),
    Case("nifti-4d", "inventory", _one_crop(label=np.zeros((*SHAPE, 3), np.uint8)),
         (f"crop {BAD}: label", "must be a 3D volume, got 4D shape (16, 20, 24, 3)")),
    Case("nifti-shape-mismatch", "inventory",
         _one_crop(image=np.zeros(SHAPE, np.float32), label=np.zeros((16, 20, 20), np.uint8)),
         (f"crop {BAD}: image/label shape mismatch", "is (16, 20, 24)", "is (16, 20, 20)")),
    Case("nifti-non-finite", "inventory", lambda w: w.dataset(crops={1: {"image": _nan_image()}}),
         (f"crop {BAD}: image", "1 non-finite voxels (NaN or Inf)")),
    Case("nifti-wrong-spacing", "inventory",
         lambda w: w.dataset(crops={1: {"image_spacing": (8.0, 8.0, 16.0)}}),
         (f"crop {BAD}: image", "spacing (8.0, 8.0, 16.0) differs from data.spacing_nm")),
    Case("nifti-label-above-14", "inventory", _one_crop(label=np.full(SHAPE, 15, np.uint8)),
         (f"crop {BAD}: label", "values 15 are not label values of the configured classes "
          "(0 and 1..14; see classes.atomic)")),
    Case("nifti-float-label", "inventory", _one_crop(label=np.ones(SHAPE, np.float32)),
         (f"crop {BAD}: label", "on-disk dtype float32 is not an integer type")),
    # --- configuration
    Case("config-missing-file", "inventory", lambda w: w.configs.append("nope.yaml"),
         ("config: file not found: nope.yaml",)),
    Case("config-unknown-key", "inventory", lambda w: w.override({"data": {"datalistt": "x"}}),
         ("config: unknown key 'data.datalistt'",)),
    Case("config-wrong-type", "inventory", lambda w: w.override({"train": {"gpus": "two"}}),
         ("config: key 'train.gpus' has value 'two' of type string; expected integer",)),
    Case("config-roi-not-divisible", "train",
         lambda w: w.override({"models": {"tiny": {"roi_size": [16, 16, 18]}}}),
         ("key 'models.tiny.roi_size' = [16, 16, 18]: every side must be divisible by 4",)),
    Case("config-batch-too-large", "train",
         lambda w: w.override({"models": {"tiny": {"batch_size": 64}}}),
         ("key 'models.tiny.batch_size' = 64 is larger than the data allows",)),
    Case("config-unknown-model", "train", lambda w: w.args.__setitem__(1, "tiny2"),
         ("config: unknown model key 'tiny2' (configured: tiny)",)),
    Case("config-class-weights-length", "train",
         lambda w: w.override({"models": {"tiny": {"class_weights": [1, 2, 3]}}}),
         ("config: key 'models.tiny.class_weights' has 3 values; classes.atomic has 14 "
          "classes",)),
    # --- checkpoints (predict stage: loaded before the network is built or moved to a GPU)
    Case("checkpoint-missing", "predict", lambda w: w.path(BEST).unlink(),
         ("checkpoint results/tiny/train/checkpoints/best.pt: file not found",)),
    Case("checkpoint-truncated", "predict", lambda w: truncate(w.path(BEST), 0.5),
         ("checkpoint results/tiny/train/checkpoints/best.pt: truncated or corrupt (a zip "
          "archive without its directory: cut short at",)),
    Case("checkpoint-other-model", "predict", _checkpoint(model_name="segresnet"),
         ("best.pt: written for model 'segresnet', not 'tiny'",)),
    Case("checkpoint-other-network-config", "predict",
         _checkpoint(network=checkpoint.identity(
             {**TINY_MODEL["network"], "init_filters": 8, "norm": "INSTANCE"}, ATOMIC)),
         ("best.pt: network config differs from this model's: init_filters is 8 in the "
          "checkpoint, 4 configured",)),
    Case("checkpoint-other-classes", "predict",
         _checkpoint(network=checkpoint.identity(TINY_MODEL["network"], ATOMIC[:2])),
         ("best.pt: network config differs from this model's: classes is ['ecs', 'pm'] in the "
          "checkpoint, ['ecs', 'pm', 'mito_mem',",)),
    Case("checkpoint-pickled-object", "predict", _pickled_object,
         ("best.pt: refused: it holds a pickled object (posix.system)", "weights_only=True")),
    # --- caching
    Case("caching-selection-missing", "train",
         lambda w: w.path("results/probe/caching_strategy.json").unlink(),
         ("caching: results/probe/caching_strategy.json not found",)),
    Case("caching-store-dir-full", "train", _store_full,
         ("error: caching: ", f"/{HOSTILE} has 1000 bytes free but the store needs 64.00 KiB"),
         process=True, slow=True),
]
CASE_IDS = [c.id for c in CASES]


# ---------------------------------------------------------------- running and checking


def run_in_process(w: World) -> tuple[int, str]:
    """`cellmapseg.cli.main` in w.root: its exit status and everything it wrote to stderr (an
    exception other than SystemExit is printed as the interpreter would, with exit status 1)."""
    err = io.StringIO()
    old = Path.cwd()
    os.chdir(w.root)
    try:
        with contextlib.redirect_stderr(err):
            try:
                cli.main(w.argv())
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # shown as the user would see it
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(old)
    return code, err.getvalue()


def run_process(w: World) -> tuple[int, str]:
    """`python -m cellmapseg.cli ...` in w.root, as a user (or a Snakemake rule) runs it."""
    proc = subprocess.run([sys.executable, "-m", "cellmapseg.cli", *w.argv()], cwd=w.root,
                          capture_output=True, text=True, env={**os.environ, **w.env},
                          timeout=300)
    return proc.returncode, proc.stderr


def run_case(case: Case, root: Path, base: Base, process: bool = False
             ) -> tuple[World, int, str]:
    w = World.create(root, base, case.stage)
    case.setup(w)
    code, stderr = (run_process if process or case.process else run_in_process)(w)
    return w, code, stderr


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def check(case: Case, w: World, code: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert code == EXIT_BAD_INPUT, (code, stderr[-3000:])
    lines = error_lines(stderr)
    assert len(lines) == case.lines, lines
    text = "\n".join(lines)
    for part in case.expect:
        assert part in text, (part, text)
    for rel in w.outputs:
        assert not w.path(rel).exists(), f"{rel} exists after a failed {case.stage}"
    if case.stage == "train":  # stopped before torchrun started any rank
        assert not w.path("results/tiny/train/train.log").exists()
        assert not w.path("results/tiny/train/checkpoints").exists()
    assert not w.path("pwned").exists() and not w.path("pwned2").exists()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    return prepare_base(tmp_path_factory.mktemp("base"))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] * c.slow)
                                  for c in CASES])
def test_bad_input(case: Case, base: Base, tmp_path: Path) -> None:
    w, code, stderr = run_case(case, tmp_path / "case", base)
    check(case, w, code, stderr)
    if case.id == "caching-store-dir-full":  # nothing half-built is left in the store folder
        assert [p.name for p in w.path(HOSTILE).iterdir() if p.is_dir()] == []


def test_the_matrix_covers_every_required_kind() -> None:
    assert len(CASES) >= 20
    assert len(set(CASE_IDS)) == len(CASE_IDS)
    kinds = {c.id.split("-")[0] for c in CASES}
    assert kinds == {"datalist", "nifti", "config", "checkpoint", "caching"}


@pytest.mark.parametrize("case_id", ["nifti-truncated-gzip", "config-batch-too-large"])
def test_console_entry_is_what_a_user_sees(case_id: str, base: Base, tmp_path: Path) -> None:
    """A real `python -m cellmapseg.cli` process prints the same line and exit status as the
    in-process run the matrix uses (a data stage, and the train stage with its torch imports)."""
    case = CASES[CASE_IDS.index(case_id)]
    w, code, stderr = run_case(case, tmp_path / "process", base, process=True)
    check(case, w, code, stderr)
    w2, code2, stderr2 = run_case(case, tmp_path / "inproc", base)
    assert code2 == code
    assert [ln.replace(str(w2.root), "") for ln in error_lines(stderr2)] == [
        ln.replace(str(w.root), "") for ln in error_lines(stderr)]


# ---------------------------------------------------------------- a truncated store


def run_store_truncated(root: Path, base: Base) -> tuple[World, int, str, dict[str, Any]]:
    """Train (strategy B) over a store whose data.bin was cut in half: not an error; the store
    is found incomplete, rebuilt, and training completes. Returns the store's state."""
    from cellmapseg.data.inventory import read_inventory
    from cellmapseg.data.store import ensure_store, is_complete

    w = World.create(root, base, "train")
    store_dir = w.path("shm")
    info = ensure_store(store_dir, read_inventory(base.inventory).to_dict("records"))
    data = info.path / "data.bin"
    size = data.stat().st_size
    with open(data, "r+b") as fh:
        fh.truncate(size // 2)
    assert not is_complete(info.path)
    w.write_json("results/probe/caching_strategy.json", {
        "strategy": "B", "store_dir": str(store_dir), "disk_dir": str(w.path("disk")),
        "d_threshold_mb": 500})
    code, stderr = run_process(w)
    state = {"complete": is_complete(info.path),
             "size_restored": data.is_file() and data.stat().st_size == size}
    return w, code, stderr, state


@pytest.mark.slow
def test_truncated_store_is_rebuilt_and_training_completes(base: Base, tmp_path: Path) -> None:
    w, code, stderr, state = run_store_truncated(tmp_path / "case", base)
    assert code == 0, stderr[-3000:]
    assert state == {"complete": True, "size_restored": True}
    assert w.path("results/tiny/train/summary.json").is_file()


# ---------------------------------------------------------------- through Snakemake


def run_snakemake(root: Path, override: str, target: str = "results/data/inventory.csv"
                  ) -> subprocess.CompletedProcess:
    """The workflow on the embedded default config plus an override, in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "override.yaml").write_text(override)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"),
           "--directory", str(root), "--configfile", str(ROOT / "config" / "config.yaml"),
           str(root / "override.yaml"), "--cores", "1", target]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def corrupt_datalist(root: Path) -> str:
    datalist = root / "data" / "datalist.json"
    datalist.parent.mkdir(parents=True, exist_ok=True)
    datalist.write_text('{"training": [')
    return f"data: {{datalist: '{datalist}', synthetic: {{enabled: false}}}}\n"


SNAKEMAKE_CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "snakemake-unknown-config-key": (lambda root: "data: {datalistt: x}\n",
                                     "error: config: unknown key 'data.datalistt'"),
    "snakemake-corrupt-datalist": (corrupt_datalist, "datalist.json: datalist is not valid JSON"),
}


@pytest.mark.parametrize("case_id", list(SNAKEMAKE_CASES))
def test_workflow_stops_with_one_line_and_no_output(case_id: str, tmp_path: Path) -> None:
    make_override, expected = SNAKEMAKE_CASES[case_id]
    proc = run_snakemake(tmp_path, make_override(tmp_path))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = error_lines(output)
    assert len(lines) == 1 and expected in lines[0], output[-3000:]
    assert "Traceback" not in output
    assert not (tmp_path / "results/data/inventory.csv").exists()
    assert not (tmp_path / "results/data/inventory.config.yaml").exists()
