#!/usr/bin/env python3
"""Create a TPU VM, or a queued resource holding one, and wait until it is ready.

  tpu_scripts/create.py --name gpt2-v4-32 --zone us-central2-b --accelerator-type v4-32 [--spot | --preemptible]
                        [--queued [--valid-until-duration 6h]] [--runtime-version V] [--project P] [--dry-run]
"""
from __future__ import annotations

import tpuvm


def build_parser() -> tpuvm.Parser:
    p = tpuvm.parser(__doc__.splitlines()[0])
    tpuvm.add_create_args(p)
    tpuvm.add_queued_arg(p)
    p.add_argument("--no-wait", action="store_true", help="--queued: return once the request is accepted")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between state polls (default 30)")
    return p


def create(runner: tpuvm.Runner, args) -> None:
    """Creates the TPU (a queued resource waits in the queue; this polls until it is ACTIVE unless --no-wait)."""
    target = tpuvm.Target.of(args)
    runner.run(tpuvm.create_command(target, args))
    if args.queued and not getattr(args, "no_wait", False):
        tpuvm.wait_ready(runner, target, queued=True, interval_s=args.interval)


if __name__ == "__main__":
    tpuvm.main(build_parser, create)
