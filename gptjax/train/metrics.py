"""Metric sinks (JSONL, TensorBoard), MFU, and the reproducibility record."""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import jax

from gptjax import fileio
from gptjax.errors import GptjaxError

# Dense bf16 peak FLOP/s per device (per chip on TPU).
PEAK_FLOPS = (
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12), ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
)
CPU_FLOPS_PER_CORE = 160e9  # AVX-512 fp32 FMA estimate, close to the ~320 GFLOP/s measured on 2 cores here


def peak_flops_of_kind(device_kind: str) -> float:
    """The PEAK_FLOPS entry of a device kind (e.g. "TPU v5 lite"), 0 when the table has none."""
    return next((flops for name, flops in PEAK_FLOPS if name.lower() in device_kind.lower()), 0.0)


def peak_flops_per_device(override: float = 0.0) -> float:
    if override:
        return override
    device = jax.devices()[0]
    if known := peak_flops_of_kind(device.device_kind):
        return known
    if device.platform == "cpu":
        return CPU_FLOPS_PER_CORE * (os.cpu_count() or 1) / jax.local_device_count()
    return 0.0


class _ObjectRecordWriterFactory:
    """tensorboardX's writer factory for gs:// logdirs, so event files go through gptjax.fileio (the layer every
    workdir write uses) instead of tensorboardX's own Cloud Storage client."""

    def open(self, path: str) -> fileio.ObjectAppender:
        return fileio.ObjectAppender(path, binary=True)

    def directory_check(self, path: str) -> None:
        pass  # object storage has no directories


def _import_tensorboardx():
    """tensorboardX imported without PyTorch: it imports torch, if installed, only to accept torch tensors as values
    (~1.5 s of every run's start-up here); gptjax logs floats. A torch already imported is left alone."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
    try:
        import tensorboardX
        from tensorboardX import record_writer
    finally:
        if hide:
            del sys.modules["torch"]
    return tensorboardX.SummaryWriter, record_writer


def _summary_writer(logdir):
    SummaryWriter, record_writer = _import_tensorboardx()

    for scheme in fileio.REMOTE_SCHEMES:
        record_writer.register_writer_factory(scheme.removesuffix("://"), _ObjectRecordWriterFactory())
    return SummaryWriter(str(logdir))


class MetricWriter:
    """Appends metrics to workdir/metrics.jsonl and TensorBoard event files (process 0 only).

    On a gs:// workdir both are objects rewritten whole, at most every fileio.APPEND_UPLOAD_S, and metrics.jsonl
    also at every checkpoint (`sync`), so the lines up to the step a run resumes from are always stored."""

    def __init__(self, workdir: Path, tensorboard: bool, start_step: int = 0, tracker=None):
        """`start_step`: the step the run starts or resumes from; lines logged for later steps by an earlier,
        interrupted process are dropped first, since this run logs those steps again. `tracker` (e.g. a
        gptjax.train.tracker.WandbTracker) gets the same scalars, and is closed with the writer."""
        self.enabled = jax.process_index() == 0
        self.tracker = tracker
        if self.enabled:
            drop_steps_after(workdir / "metrics.jsonl", start_step)
        self.jsonl = fileio.open_append(workdir / "metrics.jsonl") if self.enabled else None
        self.tb = None
        if self.enabled and tensorboard:
            self.tb = _summary_writer(workdir / "tensorboard")

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in values.items()}
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
        if self.tracker is not None:
            self.tracker.log(step, scalars)

    def sync(self) -> None:
        """Stores every line written so far (they are already in the file locally; uploaded on object storage)."""
        if isinstance(self.jsonl, fileio.ObjectAppender):
            self.jsonl.sync()

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.tracker is not None:
            self.tracker.close()


def _logged_step(line: str) -> int | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("step") if isinstance(record, dict) else None


def drop_steps_after(path: Path, step: int) -> None:
    """Rewrites a metrics.jsonl (atomically) without the lines of steps after `step` (all of them at step 0), and
    without a last line cut short by a kill mid-write; other lines are kept as they are."""
    location = fileio.as_path(path)
    if not location.exists():
        return
    lines = location.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for number, line in enumerate(lines, 1):
        logged = _logged_step(line)
        if logged is None and line.strip() and number == len(lines) and not line.endswith("\n"):
            continue  # cut short mid-write
        if logged is not None and (logged > step or step == 0):
            continue
        kept.append(line)
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"  # the next line appended must start a line of its own
    if kept != lines:
        fileio.write_text_atomic(path, "".join(kept))


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def reproducibility_record(mesh_shape: dict) -> dict:
    """What produced a run: code version, packages, devices, mesh, command line."""
    packages = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "sentencepiece"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    commit = _git("rev-parse", "HEAD")
    return {
        "git_commit": commit or "unknown",
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None,
        "packages": packages,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device_kinds": sorted({d.device_kind for d in jax.devices()}),
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "mesh": mesh_shape,
        "command": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_metrics(workdir: Path) -> dict[int, dict[str, float]]:
    """A run's metrics.jsonl as step -> values, in step order; a later line wins for the same step and key (a
    resumed run logs again the steps it redoes after its checkpoint)."""
    path = Path(workdir) / "metrics.jsonl"
    rows: dict[int, dict[str, float]] = {}
    if not path.is_file():
        return rows
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # a line cut short by a kill mid-write
            raise GptjaxError(f"{path} line {number} is not JSON; move the file aside and rerun the run") from None
        step = int(record.pop("step"))
        rows.setdefault(step, {}).update(record)
    return dict(sorted(rows.items()))
