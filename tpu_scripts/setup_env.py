#!/usr/bin/env python3
"""Set up the environment on every worker: a venv in ~/gptjax/.venv and `pip install -e '.[tpu]'` (run after sync.py).

  tpu_scripts/setup_env.py --name gpt2-v4-32 --zone us-central2-b [--extras tpu] [--project P] [--dry-run]

Idempotent: an existing venv is reused, so rerunning it (or watch.py after a preemption) only checks the install.
"""
from __future__ import annotations

import re
import shlex

import tpuvm


def build_parser() -> tpuvm.Parser:
    p = tpuvm.parser(__doc__.splitlines()[0])
    tpuvm.add_setup_args(p)
    return p


def remote_command(extras: str) -> str:
    """The shell command every worker runs: make the venv (installing python3-venv if missing), install gptjax."""
    if not re.match(r"^[a-z0-9_-]+(,[a-z0-9_-]+)*$", extras):
        raise tpuvm.UserError(f"--extras {extras!r} must be comma-separated extra names, e.g. tpu or tpu,hf")
    d = tpuvm.REMOTE_DIR
    make_venv = ("python3 -m venv .venv || { sudo apt-get -qq update && sudo apt-get -qq install -y python3-venv "
                 "&& python3 -m venv .venv; }")
    return (f"set -e; cd {d} || {{ echo 'no ~/{d} on' $(hostname)': run sync.py first' >&2; exit 1; }}; "
            f"[ -x .venv/bin/pip ] || {{ rm -rf .venv; {make_venv}; }}; "
            f".venv/bin/pip install -q --upgrade pip; .venv/bin/pip install -q -e {shlex.quote(f'.[{extras}]')}; "
            f".venv/bin/gptjax --help > /dev/null && echo \"$(hostname): gptjax installed\"")


def setup(runner: tpuvm.Runner, args) -> None:
    runner.run(tpuvm.ssh(tpuvm.Target.of(args), remote_command(args.extras)))


if __name__ == "__main__":
    tpuvm.main(build_parser, setup)
