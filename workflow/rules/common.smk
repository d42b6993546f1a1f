# Shared helpers for the rules. Light imports only: nothing heavy runs at parse time.
# Every path under results/ comes from cellmapseg.layout (R), the one owner of the layout.
import sys

from cellmapseg import layout
from cellmapseg.config import from_dict
from cellmapseg.layout import RESULTS as R
from cellmapseg.report.console import print_comparison
from cellmapseg.runtime.process import bad_input_exits

with bad_input_exits():
    CFG = from_dict(config)
    SUBMISSION_MODEL = CFG.submission_model if CFG.data.zarr.test_manifest else None

# The comparison's rows ("entries", results/{model}/ each): trained models, TTA variants
# (NETWORK: they run a network and keep its probabilities), tuned variants and ensembles
# (DERIVED: predicted from kept probabilities); SWEPT: scored at every tuning threshold.
ENTRIES = list(CFG.entries)
NETWORK = list(CFG.network_entries)
DERIVED = list(CFG.derived_entries)
SWEPT = list(CFG.swept)


def one_of(names):
    """A wildcard constraint matching exactly `names` (nothing when there are none)."""
    return "|".join(names) or "__none__"


wildcard_constraints:
    model=one_of(ENTRIES),
    crop=r"[^/]+",


def job_gpus(w):
    """--gpus of a one-node training job (its allocation's GPUs); none on more nodes, where
    --gpus would be the job's total, spread as Slurm likes: job_gres asks per node there."""
    a = CFG.allocation(w.model)
    return a.gpus if a.nodes == 1 else None


def job_gres(w):
    a = CFG.allocation(w.model)
    return f"gpu:{a.gpus}" if a.nodes > 1 and a.gpus else None


def trained_summary(w):
    """The training summary of the model under an entry (its checkpoint, its config)."""
    return str(R.train(CFG.trained_model(w.model)).summary)


def entry_params(w):
    """An entry's own config section, so that its jobs rerun when it changes."""
    for section in ("models", "variants", "ensembles"):
        if w.model in config.get(section, {}):
            return {section: config[section][w.model]}
    return {}


def model_item(key, caption, label):
    """A per-model report item: category '2. Models', one subcategory per model."""
    return report(
        str(R.model_report("{model}")[key]),
        caption=f"../report/{caption}",
        category="2. Models",
        subcategory="{model}",
        labels={"model": "{model}", "figure": label},
    )


def validation_crops():
    """The validation crops' ids, once the inventory (a checkpoint) is written (pandas is
    imported then, not at parse time)."""
    from cellmapseg.data.inventory import validation_crop_ids

    return validation_crop_ids(checkpoints.inventory.get().output.csv)


def each_crop(pattern):
    """An input function: `pattern` (a layout path of model and crop) for every validation crop."""
    return lambda w: [str(pattern(w.model, crop)) for crop in validation_crops()]


def candidate_tables(w):
    """choose's inputs: the inventory and, per member, its per-crop candidate tables."""
    tables = {}
    for member, (owner, kind) in CFG.candidate_tables(w.model).items():
        pattern = R.crop_sweep if kind == "sweep" else R.crop_eval
        tables[f"table_{member}"] = [str(pattern(owner, c)) for c in validation_crops()]
    return {"inventory": str(R.inventory), **tables}
