"""`gptjax train --config experiments/X.py --workdir DIR [--config.a.b=v ...]`: train or resume a run."""
from __future__ import annotations

import argparse
import json

from gptjax.cli.common import load_config

HELP = "train or resume: --config experiments/X.py|RUN/config.json --workdir DIR [--config.a.b=v ...]"
TAKES_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="an experiment file (experiments/X.py) or a run's config.json")
    p.add_argument("--workdir", required=True)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from gptjax.train.loop import train

    cfg = load_config(args.config, overrides)
    summary = train(cfg, args.workdir)
    print(json.dumps({k: summary[k] for k in ("step", "loss", "val_loss", "val_ppl", "val_bpb") if k in summary}))
    return 0
