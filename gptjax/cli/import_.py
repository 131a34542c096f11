"""`gptjax import --format hf --src HF_DIR --workdir DIR [--tokenizer-dir DIR]`: a transformers model as a new
gptjax workdir at step 0 (gptjax.interop.hf); --tokenizer-dir pairs a weights-only directory with a tokenizer."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "import a model (--format hf) into a new workdir"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, choices=("hf",))
    p.add_argument("--src", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--tokenizer-dir", default=None,
                   help="the tokenizer to pair with the model (instead of --src's own; needed to train a weights-only "
                        "checkpoint): HF tokenizer files, GPT-2 vocab.json + merges.txt, or a gptjax tokenizer dir")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from gptjax.errors import GptjaxError
    from gptjax.interop import hf

    if args.format != "hf":
        raise GptjaxError(f"unknown import format '{args.format}' (hf)")
    cfg, model = hf.import_hf(args.src, args.workdir, tokenizer_dir=args.tokenizer_dir)
    workdir = Path(args.workdir).absolute()
    tokenizer = "no" if model.tokenizer is None else model.tokenizer.kind
    advice = hf.next_steps(model.tokenizer, workdir)
    print(f"imported {hf.ARCHITECTURES[model.family]} from {args.src} into {workdir} (step 0, {tokenizer} tokenizer, "
          f"vocab {cfg.model.vocab_size}, block_size {cfg.model.block_size}); {advice}")
    return 0
