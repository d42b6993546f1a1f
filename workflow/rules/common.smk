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


wildcard_constraints:
    model="|".join(CFG.models) or "__no_models__",
    crop=r"[^/]+",


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
