#!/usr/bin/env python3
"""Delete the TPU VM (or the queued resource and its TPU VM), without a prompt. The gs:// workdir is kept.

  tpu_scripts/delete.py --name gpt2-v4-32 --zone us-central2-b [--queued] [--project P] [--dry-run]
"""
from __future__ import annotations

import tpuvm


def build_parser() -> tpuvm.Parser:
    p = tpuvm.parser(__doc__.splitlines()[0])
    tpuvm.add_queued_arg(p)
    return p


def delete(runner: tpuvm.Runner, args) -> None:
    runner.run(tpuvm.delete_command(tpuvm.Target.of(args), args.queued))


if __name__ == "__main__":
    tpuvm.main(build_parser, delete)
