"""`gptjax prepare --input ... --out DIR`: raw text -> filtered, deduplicated token shards + tokenizer + report."""
from __future__ import annotations

import argparse

HELP = "raw text -> filtered, deduplicated token shards + tokenizer + report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gptjax.data.pipeline import add_prepare_arguments

    add_prepare_arguments(p)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from gptjax.data.pipeline import run_prepare

    return run_prepare(args)
