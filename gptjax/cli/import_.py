"""`gptjax import --format hf --src HF_DIR --workdir DIR`: a transformers model as a new gptjax workdir."""
from __future__ import annotations

import argparse

HELP = "import a model (--format hf) into a new workdir"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, choices=("hf",))
    p.add_argument("--src", required=True)
    p.add_argument("--workdir", required=True)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from gptjax.interop import import_cli

    return import_cli(args)
