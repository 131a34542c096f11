"""`gptjax export --workdir DIR --format hf|safetensors --out OUT`: a trained model in another format."""
from __future__ import annotations

import argparse

HELP = "export a trained model (--format hf | safetensors)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True)
    p.add_argument("--format", required=True, choices=("hf", "safetensors"))
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from gptjax.interop import export_cli

    return export_cli(args)
