#!/usr/bin/env python3
"""Put the code (and optionally a prepared dataset) on every worker, at ~/gptjax.

  tpu_scripts/sync.py --name gpt2-v4-32 --zone us-central2-b [--git URL [--ref main]] [--data DIR|gs://...]
                      [--project P] [--dry-run]

Without --git it copies this checkout's files (git ls-files: tracked and untracked-but-not-ignored, so no .venv,
runs/ or caches) as one tarball with `gcloud compute tpus tpu-vm scp --worker=all`. With --git every worker
clones the repository (or fetches it, if already cloned) and checks out --ref.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import tarfile
import tempfile
from pathlib import Path

import tpuvm

REPO = Path(__file__).resolve().parent.parent
TARBALL = "gptjax-sync.tar.gz"


def build_parser() -> tpuvm.Parser:
    p = tpuvm.parser(__doc__.splitlines()[0])
    tpuvm.add_sync_args(p)
    return p


def checkout_files(root: Path) -> list[str]:
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise tpuvm.UserError(f"{root} is not a git checkout; copy it with --git URL instead") from None
    return [f for f in out.decode().split("\0") if f and (root / f).is_file()]


def ship(runner: tpuvm.Runner, target: tpuvm.Target, root: Path, files: list[str], remote_dir: str) -> None:
    """Packs `files` (relative to `root`) into one tarball, copies it to every worker, unpacks it in `remote_dir`."""
    unpack = (f"mkdir -p {remote_dir} && tar -xzf {TARBALL} -C {remote_dir} && rm -f {TARBALL}")
    with tempfile.TemporaryDirectory(prefix="gptjax-sync-") as tmp:
        tarball = os.path.join(tmp, TARBALL)
        runner.note(f"pack {len(files)} files of {root} into {tarball}")
        if not runner.dry_run:
            with tarfile.open(tarball, "w:gz") as tar:
                for name in files:
                    tar.add(root / name, arcname=name)
        runner.run(tpuvm.scp(target, tarball, TARBALL))
        runner.run(tpuvm.ssh(target, unpack))


def git_command(url: str, ref: str) -> str:
    d, q = tpuvm.REMOTE_DIR, shlex.quote
    return (f"set -e; [ -d {d}/.git ] || git clone -q {q(url)} {d}; git -C {d} fetch -q {q(url)} {q(ref)}; "
            f"git -C {d} checkout -q --detach FETCH_HEAD; echo \"$(hostname): $(git -C {d} log -1 --format=%h)\"")


def sync_data(runner: tpuvm.Runner, target: tpuvm.Target, data: str) -> None:
    """A prepared dataset to ~/gptjax/data/NAME on every worker: from gs:// by each worker, or copied from here."""
    remote = f"{tpuvm.REMOTE_DIR}/data"
    if data.startswith("gs://"):
        runner.run(tpuvm.ssh(target, f"mkdir -p {remote} && gcloud storage cp -r {shlex.quote(data.rstrip('/'))} "
                                     f"{remote}/"))
        return
    path = Path(data).resolve()
    if not path.is_dir():
        raise tpuvm.UserError(f"--data {data!r} is not a folder here (give a prepared dataset folder or gs://...)")
    files = sorted(str(p.relative_to(path.parent)) for p in path.rglob("*") if p.is_file())
    ship(runner, target, path.parent, files, remote)


def sync(runner: tpuvm.Runner, args) -> None:
    target = tpuvm.Target.of(args)
    if args.git:
        runner.run(tpuvm.ssh(target, git_command(args.git, args.ref)))
    else:
        ship(runner, target, REPO, checkout_files(REPO), tpuvm.REMOTE_DIR)
    if args.data:
        sync_data(runner, target, args.data)


if __name__ == "__main__":
    tpuvm.main(build_parser, sync)
