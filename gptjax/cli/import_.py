"""`gptjax import --format hf --src HF_DIR --workdir DIR [--tokenizer-dir DIR]`: a transformers model as a new
gptjax workdir."""
from __future__ import annotations

import argparse

HELP = "import a model (--format hf) into a new workdir"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, choices=("hf",))
    p.add_argument("--src", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--tokenizer-dir", default=None,
                   help="the tokenizer to pair with the model (instead of --src's own; needed to train a weights-only "
                        "checkpoint): HF tokenizer files, GPT-2 vocab.json + merges.txt, or a gptjax tokenizer dir")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from gptjax.interop import import_cli

    return import_cli(args)
