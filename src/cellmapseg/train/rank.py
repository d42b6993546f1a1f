"""Entry point of one training rank (started by torchrun; see cellmapseg.stages.train).

    torchrun --standalone --nnodes=1 --nproc_per_node=N -m cellmapseg.train.rank \
        --model NAME --config RESOLVED.yaml --inventory INV.csv --caching STRATEGY.json --out DIR

On more than one node, one torchrun agent per node (cellmapseg.runtime.torchrun.launch).
"""

from __future__ import annotations

import argparse
import json

from cellmapseg import config as config_mod
from cellmapseg.runtime.process import bad_input_exits, setup_logging
from cellmapseg.runtime.torchrun import die_with_parent


def main(argv: list[str] | None = None) -> None:
    die_with_parent()  # before the heavy imports: a kill -9 of the job must not leave orphans
    from cellmapseg.data.inventory import read_inventory
    from cellmapseg.probe.select import read_selection
    from cellmapseg.train import distributed
    from cellmapseg.train.loop import Trainer

    p = argparse.ArgumentParser()
    for flag in ("--model", "--config", "--inventory", "--caching", "--out"):
        p.add_argument(flag, required=True)
    args = p.parse_args(argv)
    setup_logging()
    with bad_input_exits():
        cfg = config_mod.load(args.config)
        d = distributed.setup(cfg.train.gpus)
        distributed.deterministic(d, cfg.train.deterministic)
        try:
            trainer = Trainer(cfg, args.model, read_inventory(args.inventory),
                              read_selection(args.caching), d, args.out)
            summary = trainer.fit()
            if d.is_main:
                print(json.dumps(summary))
        finally:
            distributed.teardown()


if __name__ == "__main__":
    main()
