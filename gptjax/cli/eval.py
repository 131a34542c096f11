"""`gptjax eval --workdir DIR_OR_EXPORT [--data DIR] [--split val]`: loss, perplexity and bits/byte on a split."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from gptjax.errors import GptjaxError

HELP = "loss / perplexity / bits-per-byte of a trained model on a data split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="training workdir or export dir")
    p.add_argument("--data", help="prepared data dir (default: the one the model was trained on)")
    p.add_argument("--split", default="val")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=0, help="evaluate only the first N tokens (0 = all)")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import gptjax
    from gptjax.eval.perplexity import evaluate_split

    lm = gptjax.load(args.workdir)
    data_dir = Path(args.data or lm.meta.get("data_dir", ""))
    if not args.data and not data_dir.name:
        raise GptjaxError("this model does not record its data dir; pass --data DIR")
    print(json.dumps(evaluate_split(lm, data_dir, args.split, args.batch_size, args.max_tokens)))
    return 0
