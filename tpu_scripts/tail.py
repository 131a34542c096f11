#!/usr/bin/env python3
"""Show (and follow) the training log of a worker.

  tpu_scripts/tail.py --name gpt2-v4-32 --zone us-central2-b [--worker 0|all] [--lines 100] [--no-follow] [--dry-run]

Worker 0 holds the run's progress and metrics; --worker=all shows every worker's log (e.g. after a crash).
"""
from __future__ import annotations

import re

import tpuvm


def build_parser() -> tpuvm.Parser:
    p = tpuvm.parser(__doc__.splitlines()[0])
    p.add_argument("--worker", default="0", help="a worker number, or all (default 0)")
    p.add_argument("--lines", type=int, default=100, help="lines of the log to show first (default 100)")
    p.add_argument("--no-follow", action="store_true", help="print and return instead of following the log")
    return p


def tail(runner: tpuvm.Runner, args) -> None:
    if not re.match(r"^(all|[0-9]+)$", args.worker):
        raise tpuvm.UserError(f"--worker {args.worker!r} must be a worker number (0, 1, ...) or all")
    if args.lines < 0:
        raise tpuvm.UserError(f"--lines {args.lines} must be >= 0")
    follow = "" if args.no_follow else " -F"
    command = f"tail -n {args.lines}{follow} ~/{tpuvm.LOG_FILE}"
    runner.run(tpuvm.ssh(tpuvm.Target.of(args), command, worker=args.worker))


if __name__ == "__main__":
    tpuvm.main(build_parser, tail)
