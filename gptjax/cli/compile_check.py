"""`gptjax compile-check --config X --topology v5p-64 [--mesh data=1,fsdp=-1,tensor=4] [--search]`: AOT-compile the
train step for a Cloud TPU topology here (no TPU needed) and say whether it fits in HBM.

Exit code 0 when it fits (with --search: when some setting fits), 1 when it does not, 2 for bad input.
"""
from __future__ import annotations

import argparse
import os

from gptjax.cli.common import load_config
from gptjax.errors import note

HELP = ("will it fit? AOT-compile the train step for a TPU topology: --config X --topology v5e-16 "
        "[--mesh ...] [--search]")
TAKES_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="an experiment file (experiments/X.py) or a run's config.json")
    p.add_argument("--topology", required=True,
                   help="Cloud TPU name (v4-32, v5p-128, v5e-16, v5litepod-16, v6e-16, 2xv5e-16) "
                        "or jax string (v5e:4x4)")
    p.add_argument("--mesh", help="data=N,fsdp=N,tensor=N (one may be -1); default: the config's mesh")
    p.add_argument("--search", action="store_true",
                   help="compile mesh splits x remat policies x grad_accum and print those that fit, "
                        "fastest-looking first")
    p.add_argument("--max-compiles", type=int, default=24, help="--search: compile at most this many settings")
    p.add_argument("--top", type=int, default=3, help="--search: stop after this many settings fit")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host compiles; TPU devices are compile-only
    from gptjax.train import compile_check as cc

    cfg = load_config(args.config, overrides)
    if not args.search:
        report = cc.compile_check(cfg, args.topology, args.mesh)
        print("\n".join(report.lines()))
        return 0 if report.fits else 1
    if args.mesh:
        note("--search tries its own meshes; --mesh is ignored")
    found = 0
    for report in cc.search(cfg, args.topology, max_compiles=args.max_compiles, want=args.top):
        found += 1
        print("\n".join(report.lines()[:-1]) + "\n" + report.verdict().replace("fits: yes", f"fit #{found}: yes"))
    print(f"fits: yes ({found} setting(s) fit)" if found else
          f"fits: no (none of the first {args.max_compiles} settings tried fits; "
          "raise --max-compiles or use more chips)")
    return 0 if found else 1
