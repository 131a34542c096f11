#!/usr/bin/env python3
"""Watch a run: poll the TPU's state, and after a preemption bring it back and relaunch the same training command.

  tpu_scripts/watch.py --name gpt2-v4-32 --zone us-central2-b --config experiments/gpt2_124m.py
                       --workdir gs://BUCKET/runs/gpt2_124m [--config.a.b=v ...] [--env VAR ...]
                       [--recreate --accelerator-type v4-32 --spot [--queued] ...] [--git URL] [--data ...]
                       [--interval 60] [--max-relaunches 20] [--dry-run]

Each poll reads the state (`tpu-vm describe`, or `queued-resources describe` with --queued) and, while it is
READY/ACTIVE, worker 0's ~/gptjax-train.exit. When the TPU is lost (PREEMPTED, TERMINATED, SUSPENDED, FAILED,
gone), it waits for it to be READY again — with --recreate it first deletes it and creates it anew with the create
flags — then runs sync, setup and launch again: the run resumes from the newest checkpoint in the gs:// workdir.
A trainer that exited 130/143 (stopped by a signal, e.g. maintenance) is relaunched too. Ends with exit 0 when
training finishes (exit file 0), and with an error when it fails (any other exit code) or after --max-relaunches.
"""
from __future__ import annotations

import time

import create
import launch
import setup_env
import sync
import tpuvm

SIGNALLED = {130, 143}  # gptjax train after SIGINT/SIGTERM: a checkpoint was saved, resume
STAYS_LOST = {"PREEMPTED", "SUSPENDED", "NOT_FOUND"}  # until deleted and created again


def build_parser() -> tpuvm.Parser:
    p = tpuvm.parser(__doc__.splitlines()[0])
    tpuvm.add_launch_args(p)
    tpuvm.add_queued_arg(p)
    tpuvm.add_sync_args(p)
    tpuvm.add_setup_args(p)
    p.add_argument("--recreate", action="store_true",
                   help="delete a lost TPU and create it again with the create flags (Spot and preemptible TPUs "
                        "stay PREEMPTED until deleted)")
    tpuvm.add_create_args(p, required=False)
    p.add_argument("--interval", type=float, default=60.0, help="seconds between polls (default 60)")
    p.add_argument("--max-relaunches", type=int, default=20, help="give up after this many relaunches (default 20)")
    return p


def exit_code(runner: tpuvm.Runner, target: tpuvm.Target) -> int | None:
    """Worker 0's trainer exit code; None while it runs (or when the worker cannot be reached)."""
    rc, text = runner.output(tpuvm.ssh(target, f"cat ~/{tpuvm.EXIT_FILE} 2>/dev/null || true", worker="0"))
    codes = [line.strip() for line in text.splitlines() if line.strip().isdigit()]
    return int(codes[-1]) if rc == 0 and codes else None


def relaunch(runner: tpuvm.Runner, args, target: tpuvm.Target) -> None:
    """Brings the TPU back (recreating it with --recreate), then sync, setup and launch as the first time."""
    if args.recreate:
        runner.run(tpuvm.delete_command(target, args.queued), check=False)
        create.create(runner, args)
    tpuvm.wait_ready(runner, target, args.queued, args.interval)
    sync.sync(runner, args)
    setup_env.setup(runner, args)
    launch.launch(runner, args)


def watch(runner: tpuvm.Runner, args) -> int:
    check(args)
    target = tpuvm.Target.of(args)
    if runner.dry_run:
        runner.note(f"every {args.interval:g} s: the state, and worker 0's exit code while READY")
        runner.run(tpuvm.describe_command(target, args.queued))
        runner.run(tpuvm.ssh(target, f"cat ~/{tpuvm.EXIT_FILE} 2>/dev/null || true", worker="0"))
        runner.note("when the TPU is lost (PREEMPTED, TERMINATED, SUSPENDED, FAILED, NOT_FOUND):")
        relaunch(runner, args, target)
        return 0
    relaunches, unknown = 0, 0
    while True:
        now = tpuvm.state(runner, target, args.queued)
        unknown = unknown + 1 if now == "UNKNOWN" else 0
        if unknown >= 10:
            raise tpuvm.UserError(f"cannot read the state of {target.name} in {target.zone} (10 tries); check "
                                  f"`gcloud auth list` and the name, zone and project")
        code = exit_code(runner, target) if now in tpuvm.READY_STATES else None
        if code == 0:
            runner.say(f"{target.name}: training finished (exit 0) after {relaunches} relaunch(es)", err=True)
            return 0
        if code is not None and code not in SIGNALLED:
            raise tpuvm.UserError(f"gptjax train exited with code {code} on worker 0 (not a preemption); read the "
                                  f"logs with tail.py --worker all, fix, then launch.py again")
        if now in tpuvm.LOST_STATES or code in SIGNALLED:
            if relaunches >= args.max_relaunches:
                raise tpuvm.UserError(f"{target.name} was lost again ({now}) after {relaunches} relaunches "
                                      f"(--max-relaunches); giving up")
            relaunches += 1
            why = f"trainer stopped by a signal (exit {code})" if code in SIGNALLED else now
            runner.say(f"{target.name}: {why}; relaunch {relaunches}", err=True)
            if now in STAYS_LOST and not args.recreate:
                runner.note(f"a {now} Spot/preemptible TPU does not come back by itself: rerun with --recreate "
                            f"and the create flags to have it deleted and created again")
            relaunch(runner, args, target)
            continue
        time.sleep(args.interval)


def check(args) -> None:
    """The launch and create flags, checked now rather than after a preemption."""
    launch.check(args)
    if args.recreate:
        if not args.accelerator_type:
            raise tpuvm.UserError("--recreate needs the create flags: --accelerator-type (and --spot/--preemptible, "
                                  "--runtime-version as at creation)")
        tpuvm.create_command(tpuvm.Target.of(args), args)
    args.no_wait = True  # relaunch() waits for READY/ACTIVE itself


if __name__ == "__main__":
    tpuvm.main(build_parser, watch, overrides=True)
