"""What every tpu_scripts/ script shares: its flags, the gcloud commands it builds, and running or printing them.

A script builds gcloud argument lists with the functions here and hands them to a `Runner`, which either runs
them (echoing each to stderr) or, with --dry-run, prints them to stdout and runs nothing. Everything a script
prints goes through `redact`, so no token, key or forwarded secret ever reaches the terminal.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

REMOTE_DIR = "gptjax"                 # the checkout on every worker, relative to the remote home
LOG_FILE = "gptjax-train.log"         # the launch's stdout + stderr on every worker
EXIT_FILE = "gptjax-train.exit"       # the launch's exit code, written when `gptjax train` ends
PID_FILE = "gptjax-train.pid"         # the launched job's process id
ENV_FILE = ".gptjax-env"              # forwarded variables; sourced and removed by the launch

ACCELERATOR = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$")
RUNTIME_VERSIONS = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
                    "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite", "v6e": "v2-alpha-tpuv6e"}
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
URL_USERINFO = re.compile(r"(://)[^/\s:@]+:[^/\s@]+@")
MASK = "****"

READY_STATES = {"READY", "ACTIVE"}  # a TPU VM's READY, a queued resource's ACTIVE
LOST_STATES = {"PREEMPTED", "TERMINATED", "STOPPED", "SUSPENDING", "SUSPENDED", "FAILED", "NOT_FOUND"}


class UserError(Exception):
    """Bad input: printed as one line `SCRIPT: error: ...`, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage + error is two lines; ours is one
        raise UserError(message)


# ---- flags ----------------------------------------------------------------------------------------------------

def parser(description: str) -> Parser:
    p = Parser(prog=os.path.basename(sys.argv[0]), description=description)
    p.add_argument("--name", required=True, help="the TPU VM (and queued resource) name, e.g. gpt2-v4-32")
    p.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-east5-a (v5p), us-west4-a (v5e)")
    p.add_argument("--project", help="the Google Cloud project (default: gcloud's configured project)")
    p.add_argument("--dry-run", action="store_true", help="print the gcloud commands instead of running them")
    return p


def add_queued_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queued", action="store_true",
                   help="the TPU is a queued resource (created with create.py --queued)")


def add_create_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--accelerator-type", required=required, help="Cloud TPU type: v4-32, v5p-128, v5litepod-16, v6e-16")
    p.add_argument("--runtime-version", help="TPU software version (default by type: v4 tpu-ubuntu2204-base, v5p "
                                             "v2-alpha-tpuv5, v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="a Spot TPU (cheaper, can be preempted at any time)")
    kind.add_argument("--preemptible", action="store_true", help="a preemptible TPU (legacy; not with --queued)")
    p.add_argument("--valid-until-duration", help="--queued: drop the request if unfilled after this long, e.g. 6h")
    p.add_argument("--service-account", help="the workers' service account (needs write access to the bucket)")


def add_sync_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--git", metavar="URL", help="clone/pull this repository on the workers instead of copying "
                                                "this checkout's files")
    p.add_argument("--ref", default="main", help="--git: the branch, tag or commit to check out (default main)")
    p.add_argument("--data", metavar="DIR_OR_GS_URL",
                   help="also put a prepared dataset (a local folder or gs://...) at gptjax/data/NAME on every worker")


def add_setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extras", default="tpu", help="pip extras to install (default tpu: pip install -e '.[tpu]')")


def add_launch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment file, relative to the checkout (experiments/X.py)")
    p.add_argument("--workdir", required=True, help="gs://BUCKET/PATH: shared by all workers, outlives preemption")
    p.add_argument("--env", action="append", default=[], metavar="VAR",
                   help="forward this variable from your environment (e.g. HF_TOKEN); repeatable; its value never "
                        "appears in a command line or in any output")


def parse(p: Parser, argv: Sequence[str] | None, overrides: bool = False) -> argparse.Namespace:
    """Parsed flags, checked; with `overrides`, trailing --config.a.b=v flags are collected in `.overrides`."""
    args, rest = p.parse_known_args(argv)
    args.overrides = []
    for flag in rest:
        if not (overrides and re.match(r"^--config\.[A-Za-z_][\w.]*=", flag)):
            raise UserError(f"unrecognized argument {flag!r}" +
                            (" (overrides are --config.section.field=value)" if overrides else ""))
        args.overrides.append(flag)
    check_target(args)
    return args


def check_target(args: argparse.Namespace) -> None:
    if not NAME.match(args.name):
        raise UserError(f"--name {args.name!r} must be lowercase letters, digits and hyphens, starting with a letter "
                        f"(at most 63), e.g. gpt2-v4-32")
    if not ZONE.match(args.zone):
        raise UserError(f"--zone {args.zone!r} is not a zone like us-central2-b")


def check_accelerator(accelerator_type: str) -> str:
    """The accelerator family of a Cloud TPU type (v4-32 -> v4); an unknown format is a UserError."""
    match = ACCELERATOR.match(accelerator_type or "")
    if not match:
        hint = ""
        if re.match(r"^v5e-\d+$", accelerator_type or ""):
            hint = f"; v5e is called {accelerator_type.replace('v5e', 'v5litepod')} in gcloud"
        raise UserError(f"--accelerator-type {accelerator_type!r} is not a Cloud TPU type like v4-32, v5p-128, "
                        f"v5litepod-16 or v6e-16{hint}")
    return match.group(1)


def check_workdir(workdir: str) -> None:
    if not re.match(r"^gs://[a-z0-9][-_.a-z0-9]*[a-z0-9](/.*)?$", workdir):
        raise UserError(f"--workdir {workdir!r} must be a gs://BUCKET/PATH: the workers share no disk and a "
                        f"preemption wipes theirs")


def forwarded_env(names: Sequence[str]) -> dict[str, str]:
    """The forwarded variables' values from this environment; a bad or unset name is a UserError."""
    values = {}
    for var in names:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", var):
            raise UserError(f"--env {var!r} must be a variable name (the value is read from your environment)")
        if var not in os.environ:
            raise UserError(f"--env {var}: {var} is not set in this environment")
        values[var] = os.environ[var]
    return values


# ---- redaction --------------------------------------------------------------------------------------------------

def secret_values(extra_names: Sequence[str] = ()) -> list[str]:
    """Values never to print: those of forwarded variables and of any variable named like a token, key or secret."""
    names = set(extra_names) | {k for k in os.environ if SECRET_NAME.search(k)}
    values = {os.environ[k] for k in names if len(os.environ.get(k, "")) >= 4}
    return sorted(values, key=len, reverse=True)


def redact(text: str, extra_names: Sequence[str] = ()) -> str:
    for value in secret_values(extra_names):
        text = text.replace(value, MASK)
    return URL_USERINFO.sub(r"\1" + MASK + "@", text)


# ---- gcloud commands ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    name: str
    zone: str
    project: str | None = None

    @classmethod
    def of(cls, args: argparse.Namespace) -> "Target":
        return cls(args.name, args.zone, args.project)

    def flags(self) -> list[str]:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])


def tpu_vm(target: Target, verb: str, *args: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, target.name, *target.flags(), *args]


def queued_resource(target: Target, verb: str, *args: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", verb, target.name, *target.flags(), *args]


def ssh(target: Target, command: str, worker: str = "all") -> list[str]:
    return tpu_vm(target, "ssh", f"--worker={worker}", "--command", command)


def scp(target: Target, local: str, remote: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{target.name}:{remote}", *target.flags(),
            f"--worker={worker}"]


def create_command(target: Target, args: argparse.Namespace) -> list[str]:
    family = check_accelerator(args.accelerator_type)
    version = args.runtime_version or RUNTIME_VERSIONS[family]
    extra = [f"--service-account={args.service_account}"] if args.service_account else []
    if args.queued:
        if args.preemptible:
            raise UserError("--preemptible is not a queued-resource option; use --spot with --queued")
        until = [f"--valid-until-duration={args.valid_until_duration}"] if args.valid_until_duration else []
        return queued_resource(target, "create", f"--node-id={target.name}",
                               f"--accelerator-type={args.accelerator_type}", f"--runtime-version={version}",
                               *(["--spot"] if args.spot else []), *until, *extra)
    if args.valid_until_duration:
        raise UserError("--valid-until-duration needs --queued (only a queued resource waits in a queue)")
    kind = ["--spot"] if args.spot else ["--preemptible"] if args.preemptible else []
    return tpu_vm(target, "create", f"--accelerator-type={args.accelerator_type}", f"--version={version}",
                  *kind, *extra)


def delete_command(target: Target, queued: bool) -> list[str]:
    if queued:  # --force also deletes the TPU VM the queued resource holds
        return queued_resource(target, "delete", "--force", "--quiet")
    return tpu_vm(target, "delete", "--quiet")


def describe_command(target: Target, queued: bool) -> list[str]:
    if queued:
        return queued_resource(target, "describe", "--format=value(state.state)")
    return tpu_vm(target, "describe", "--format=value(state)")


# ---- running ------------------------------------------------------------------------------------------------

class Runner:
    """Runs gcloud commands, or prints them (--dry-run). All it prints is redacted."""

    def __init__(self, dry_run: bool, secret_names: Sequence[str] = ()):
        self.dry_run = dry_run
        self.secret_names = list(secret_names)

    def say(self, text: str, err: bool = False) -> None:
        print(redact(text, self.secret_names), file=sys.stderr if err else sys.stdout, flush=True)

    def note(self, text: str) -> None:
        """A remark: a `# ...` line in a dry run's listing, stderr otherwise."""
        self.say(f"# {text}", err=not self.dry_run)

    def run(self, command: list[str], check: bool = True) -> int:
        """Runs `command` with its output streamed (redacted); a failure is a UserError when `check`."""
        if self.dry_run:
            self.say(shlex.join(command))
            return 0
        self.say("+ " + shlex.join(command), err=True)
        try:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace")
        except FileNotFoundError:
            raise UserError(f"{command[0]} not found on PATH; install the Google Cloud CLI "
                            f"(https://cloud.google.com/sdk/docs/install)") from None
        for line in proc.stdout:
            self.say(line.rstrip("\n"))
        rc = proc.wait()
        if rc and check:
            raise CommandFailed(f"{command[0]} {' '.join(command[1:5])} ... failed (exit {rc}); see its output above",
                                rc)
        return rc

    def output(self, command: list[str]) -> tuple[int, str]:
        """(exit code, stdout + stderr) of `command`, captured; not run in a dry run."""
        try:
            proc = subprocess.run(command, capture_output=True, text=True, errors="replace")
        except FileNotFoundError:
            raise UserError(f"{command[0]} not found on PATH; install the Google Cloud CLI") from None
        return proc.returncode, proc.stdout + proc.stderr


class CommandFailed(UserError):
    def __init__(self, message: str, rc: int):
        super().__init__(message)
        self.rc = rc


def state(runner: Runner, target: Target, queued: bool) -> str:
    """The TPU VM's (or queued resource's) state: READY, PREEMPTED, ACTIVE, ...; NOT_FOUND or UNKNOWN on failure."""
    rc, text = runner.output(describe_command(target, queued))
    if rc:
        return "NOT_FOUND" if "NOT_FOUND" in text or "not found" in text.lower() else "UNKNOWN"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].upper() if lines else "UNKNOWN"


def wait_ready(runner: Runner, target: Target, queued: bool, interval_s: float, max_unknown: int = 10) -> None:
    """Polls until the TPU is READY / ACTIVE, saying each new state once."""
    if runner.dry_run:
        runner.note(f"poll every {interval_s:g} s until {'ACTIVE' if queued else 'READY'}:")
        runner.run(describe_command(target, queued))
        return
    last, unknown = None, 0
    while True:
        now = state(runner, target, queued)
        if now in READY_STATES:
            runner.say(f"{target.name}: {now}", err=True)
            return
        unknown = unknown + 1 if now == "UNKNOWN" else 0
        if unknown >= max_unknown:
            raise UserError(f"cannot read the state of {target.name} in {target.zone} ({max_unknown} tries); "
                            f"check `gcloud auth list` and the name, zone and project")
        if now != last:
            runner.say(f"{target.name}: {now}; waiting", err=True)
        last = now
        time.sleep(interval_s)


def main(build_parser: Callable[[], Parser], action: Callable[[Runner, argparse.Namespace], int | None],
         overrides: bool = False, argv: Sequence[str] | None = None) -> None:
    """A script's entry point: parse its flags, run `action(runner, args)`; a UserError is one redacted line on
    stderr and a non-zero exit (2 for bad input, gcloud's own code when gcloud failed)."""
    prog = os.path.basename(sys.argv[0])
    try:
        args = parse(build_parser(), argv, overrides)
        code = action(Runner(args.dry_run, getattr(args, "env", [])), args) or 0
    except CommandFailed as error:
        print(redact(f"{prog}: error: {error}"), file=sys.stderr)
        code = error.rc
    except UserError as error:
        print(redact(f"{prog}: error: {error}"), file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
