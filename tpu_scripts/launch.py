#!/usr/bin/env python3
"""Launch `gptjax train` on every worker under nohup, its output in ~/gptjax-train.log (run after setup_env.py).

  tpu_scripts/launch.py --name gpt2-v4-32 --zone us-central2-b --config experiments/gpt2_124m.py
                        --workdir gs://BUCKET/runs/gpt2_124m [--config.a.b=v ...] [--env HF_TOKEN ...] [--dry-run]

Every worker runs the same command; jax.distributed.initialize() finds the other workers of the TPU VM by itself.
Relaunching the same command on the same workdir resumes from the newest checkpoint. A worker where a run is
still going refuses (exit 3). `--env VAR` copies VAR's value to the workers in a file (scp, never a command line),
which the launch reads and removes.
"""
from __future__ import annotations

import os
import shlex
import tempfile

import tpuvm


def build_parser() -> tpuvm.Parser:
    p = tpuvm.parser(__doc__.splitlines()[0])
    tpuvm.add_launch_args(p)
    return p


def check(args) -> None:
    tpuvm.check_workdir(args.workdir)
    tpuvm.forwarded_env(args.env)


def train_command(args) -> list[str]:
    return [".venv/bin/gptjax", "train", "--config", args.config, "--workdir", args.workdir, *args.overrides]


def remote_command(args) -> str:
    """What every worker runs: refuse if a trainer is running, else start one in the background and return."""
    env, log, done, pid = tpuvm.ENV_FILE, tpuvm.LOG_FILE, tpuvm.EXIT_FILE, tpuvm.PID_FILE
    job = (f"[ ! -f ~/{env} ] || {{ set -a; . ~/{env}; set +a; rm -f ~/{env}; }}; "
           f"{shlex.join(train_command(args))}; echo $? > ~/{done}")
    return (f"cd {tpuvm.REMOTE_DIR} || exit 1; "
            f"if p=$(cat ~/{pid} 2>/dev/null) && ps -o args= -p \"$p\" | grep -q 'gptjax train'; then "
            f"rm -f ~/{env}; echo \"$(hostname): gptjax train is already running (pid $p)\" >&2; exit 3; fi; "
            f"rm -f ~/{done}; nohup bash -c {shlex.quote(job)} > ~/{log} 2>&1 < /dev/null & echo $! > ~/{pid}; "
            f"echo \"$(hostname): started, log ~/{log}\"")


def copy_env(runner: tpuvm.Runner, target: tpuvm.Target, names: list[str]) -> None:
    """The forwarded variables to ~/.gptjax-env on every worker, through a 0600 temp file here."""
    values = tpuvm.forwarded_env(names)
    with tempfile.TemporaryDirectory(prefix="gptjax-env-") as tmp:
        path = os.path.join(tmp, "env")
        if not runner.dry_run:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.writelines(f"{k}={shlex.quote(v)}\n" for k, v in values.items())
        runner.note(f"forward {', '.join(names)} (values in {path}, not shown)")
        runner.run(tpuvm.scp(target, path, tpuvm.ENV_FILE))


def launch(runner: tpuvm.Runner, args) -> None:
    check(args)
    target = tpuvm.Target.of(args)
    if args.env:
        copy_env(runner, target, args.env)
    runner.run(tpuvm.ssh(target, remote_command(args)))


if __name__ == "__main__":
    tpuvm.main(build_parser, launch, overrides=True)
