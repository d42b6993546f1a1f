"""The results layout: where every stage's files live under results/. The one owner of these
names: the workflow's rules, the console script's defaults, training, prediction and the
comparison all take their paths from here (docs/outputs.md documents what each file holds).

`Results(root)` spells every path below a root (`RESULTS`, the workflow's, is ./results);
the rules pass the wildcard "{model}" as the model to get a pattern. A stage never rebuilds a
path from a root: it is handed the paths it reads and writes, and `TrainFiles` names the files
inside one training folder for the code that writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PREDICTIONS_STORE = "predictions.zarr"
PROBABILITIES_STORE = "probabilities.zarr"
MODEL_FIGURES = {"curves": "training_curves.png", "scores": "scores.png",
                 "examples": "examples.png"}
COMPARISON_SUFFIXES = ("csv", "md", "html", "png", "rst")


def resolved_config(output: str | Path) -> Path:
    """The resolved config written beside a stage's main output file (x.csv -> x.config.yaml)."""
    return Path(output).with_suffix(".config.yaml")


def predictions_config(store: str | Path) -> Path:
    """The resolved config of a prediction run, beside its store."""
    return Path(store).parent / "config.yaml"


def synthetic_summary(train_manifest: str | Path) -> Path:
    """What the synthetic Zarr generator wrote (datasets; train, validation and test crops),
    beside its train manifest."""
    return Path(train_manifest).with_suffix(".json")


@dataclass(frozen=True)
class TrainFiles:
    """The files of one training folder. Checkpoints are not Snakemake outputs (a failed job's
    outputs are deleted, and the rerun resumes from `last`)."""

    folder: Path

    # summary.json records the checkpoints relative to the folder
    BEST = "checkpoints/best.pt"
    LAST = "checkpoints/last.pt"

    @property
    def summary(self) -> Path:
        return self.folder / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.csv"

    @property
    def config(self) -> Path:
        return self.folder / "config.yaml"

    @property
    def log(self) -> Path:
        return self.folder / "train.log"

    @property
    def best(self) -> Path:
        return self.folder / self.BEST

    @property
    def last(self) -> Path:
        return self.folder / self.LAST

    @property
    def tensorboard(self) -> Path:
        return self.folder / "tensorboard"

    @property
    def mlflow_run_id(self) -> Path:
        return self.folder / "mlflow_run_id"

    @property
    def mlruns(self) -> Path:
        """MLflow's file store, shared by every model: results/mlruns beside results/{model}/
        (a train folder is results/{model}/train)."""
        return self.folder.parent.parent / "mlruns"

    def epoch(self, epoch: int) -> Path:
        """The weights kept at `epoch` (checkpoint_every)."""
        return self.folder / "checkpoints" / f"epoch_{epoch:04d}.pt"


@dataclass(frozen=True)
class Results:
    root: Path = Path("results")

    def log(self, rule: str, model: str | None = None) -> Path:
        return self.root / "logs" / (f"{rule}_{model}.log" if model else f"{rule}.log")

    # --- data and probe

    @property
    def synthetic_dir(self) -> Path:
        """The embedded default's dataset (the schema's data.datalist default points inside)."""
        return self.root / "data" / "synthetic"

    @property
    def converted_dir(self) -> Path:
        """The Zarr route's NIfTI crops and datalist (the convert rule's output)."""
        return self.root / "data" / "zarr"

    @property
    def inventory(self) -> Path:
        return self.root / "data" / "inventory.csv"

    @property
    def memory(self) -> Path:
        return self.root / "probe" / "memory.json"

    @property
    def caching(self) -> Path:
        return self.root / "probe" / "caching_strategy.json"

    @property
    def probe_report(self) -> dict[str, Path]:
        folder = self.root / "probe" / "report"
        return {"memory": folder / "memory.html", "caching": folder / "caching.html"}

    # --- one model

    def train(self, model: str) -> TrainFiles:
        return TrainFiles(self.root / model / "train")

    def predictions(self, model: str) -> Path:
        return self.root / model / "predictions" / PREDICTIONS_STORE

    def manifest(self, model: str) -> Path:
        return self.root / model / "predictions" / "manifest.json"

    def crop_predictions(self, model: str, crop_id: str) -> Path:
        """One crop's store (a job of its own); predictions.zarr links its crop group."""
        return self.root / model / "predictions" / "crops" / f"{crop_id}.zarr"

    def crop_manifest(self, model: str, crop_id: str) -> Path:
        return self.root / model / "predictions" / "crops" / f"{crop_id}.json"

    def crop_probabilities(self, model: str, crop_id: str) -> Path:
        """One crop's kept probabilities (uint8 per atomic class) of a network's prediction."""
        return self.root / model / "probabilities" / f"{crop_id}.zarr"

    def crop_sweep(self, model: str, crop_id: str) -> Path:
        """One crop's scores at every candidate threshold (eval.csv rows + `threshold`)."""
        return self.root / model / "sweep" / f"{crop_id}.csv"

    def choices(self, model: str) -> Path:
        """A derived entry's thresholds (and per-class members): per fold and final."""
        return self.root / model / "thresholds.json"

    def crop_eval(self, model: str, crop_id: str) -> Path:
        """One crop's rows of eval.csv (a job of its own)."""
        return self.root / model / "eval" / f"{crop_id}.csv"

    def eval_csv(self, model: str) -> Path:
        return self.root / model / "eval.csv"

    def eval_summary(self, model: str) -> Path:
        return self.root / model / "eval_summary.json"

    def test_predictions(self, model: str) -> Path:
        """The model's predictions of the test manifest's crops (manifest.json beside it)."""
        return self.root / model / "test_predictions" / PREDICTIONS_STORE

    def test_manifest(self, model: str) -> Path:
        return self.root / model / "test_predictions" / "manifest.json"

    def test_probabilities(self, model: str) -> Path:
        """A network's kept probabilities of the test crops (derived entries combine them)."""
        return self.root / model / "test_predictions" / PROBABILITIES_STORE

    @property
    def submission(self) -> Path:
        """The challenge submission (submission.json beside it: packing and check)."""
        return self.root / "submission" / "submission.zip"

    def model_report(self, model: str) -> dict[str, Path]:
        return {key: self.root / model / "report" / name for key, name in MODEL_FIGURES.items()}

    # --- across models

    @property
    def report(self) -> Path:
        """Where the README's command writes the HTML report (snakemake --report PATH)."""
        return self.root / "report.html"

    def comparison(self) -> dict[str, Path]:
        """comparison.{csv,md,html,png,rst} and comparison_leads.csv (the paired bootstrap of
        each column's winner against its runner-up)."""
        return {**{s: self.root / f"comparison.{s}" for s in COMPARISON_SUFFIXES},
                "leads": self.root / "comparison_leads.csv"}


RESULTS = Results()
