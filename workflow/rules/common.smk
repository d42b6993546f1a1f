# Shared helpers for the rules. Light imports only: nothing heavy runs at parse time.
import sys

from cellmapseg.cli import bad_input_exits
from cellmapseg.config import from_dict
from cellmapseg.report.console import print_comparison

with bad_input_exits():
    CFG = from_dict(config)


wildcard_constraints:
    model="|".join(CFG.models) or "__no_models__",


MODEL_REPORT = "results/{model}/report"


def model_item(name, caption, label):
    """A per-model report item: category '2. Models', one subcategory per model."""
    return report(
        f"{MODEL_REPORT}/{name}",
        caption=f"../report/{caption}",
        category="2. Models",
        subcategory="{model}",
        labels={"model": "{model}", "figure": label},
    )
