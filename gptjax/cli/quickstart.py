"""`gptjax quickstart`: train the bundled char-level Shakespeare on CPU, evaluate it on the whole val split, sample."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptjax.cli.common import load_config
from gptjax.errors import GptjaxError

HELP = "train a small Shakespeare model on CPU, evaluate it and sample from it"
REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART_CONFIG = REPO_ROOT / "experiments" / "shakespeare_char_cpu.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=0, help="0 = the experiment's 2000")
    p.add_argument("--sample-tokens", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import gptjax
    from gptjax.eval.perplexity import evaluate_split
    from gptjax.train.loop import train

    if not QUICKSTART_CONFIG.is_file():
        raise GptjaxError(f"quickstart needs the experiments/ folder of a gptjax checkout "
                          f"({QUICKSTART_CONFIG} missing); "
                          f"install with `pip install -e .` from the repository")
    cfg = load_config(str(QUICKSTART_CONFIG), [f"train.steps={args.steps}"] if args.steps else [])
    print(f"quickstart: training {cfg.name} on the bundled Shakespeare (char-level) in {args.workdir}")
    train(cfg, args.workdir)
    lm = gptjax.load(args.workdir)
    full = evaluate_split(lm, Path(lm.meta["data_dir"]), "val", 64, 0)
    print(f"\nval loss {full['loss']:.4f} over the whole val split ({full['tokens']:,} tokens) | perplexity "
          f"{full['ppl']:.2f} | bits/byte {full['bpb']:.3f}")
    print("\nsample (temperature 0.8, top-k 200):\n" + "-" * 40)
    sys.stdout.write("\n")
    lm.generate(["\n"], max_new_tokens=args.sample_tokens, temperature=0.8, top_k=200, seed=args.seed, chunk=32,
                stream=lambda texts: (sys.stdout.write(texts[0]), sys.stdout.flush()))
    print("\n" + "-" * 40)
    return 0
