# Shared helpers for the rules. Light imports only: nothing heavy runs at parse time.
import sys

from cellmapseg.cli import bad_input_exits
from cellmapseg.config import from_dict

with bad_input_exits():
    CFG = from_dict(config)


wildcard_constraints:
    model="|".join(CFG.models) or "__no_models__",
