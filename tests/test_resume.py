"""Exact resume after SIGKILL, checkpoint on SIGTERM, NaN stops with the last good checkpoint intact."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import REPO, run_cli, tiny_overrides

CONFIG = "experiments/shakespeare_char_cpu.py"


def losses_by_step(workdir: Path) -> dict[int, float]:
    """The last logged loss per step (a resumed run re-logs the steps after its checkpoint)."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def test_resume_after_sigkill_is_bit_identical(tmp_path, cache_dir):
    import gptjax

    args = tiny_overrides(steps=20, **{"train.checkpoint_every": 5, "model.dropout": 0.1})
    straight = run_cli(["train", "--config", CONFIG, "--workdir", str(tmp_path / "straight"), *args])
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = run_cli(["train", "--config", CONFIG, "--workdir", str(tmp_path / "resumed"), *args],
                     env_extra={"GPTJAX_FAULT_KILL_AFTER_STEP": "13"})
    assert killed.returncode == -signal.SIGKILL
    assert max(losses_by_step(tmp_path / "resumed")) < 20
    resumed = run_cli(["train", "--config", CONFIG, "--workdir", str(tmp_path / "resumed"), *args])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 10" in resumed.stderr + resumed.stdout

    assert losses_by_step(tmp_path / "straight") == losses_by_step(tmp_path / "resumed")
    a, b = gptjax.load(tmp_path / "straight"), gptjax.load(tmp_path / "resumed")
    assert a.step == b.step == 20
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigterm_saves_a_checkpoint_then_resume_finishes(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "gptjax", "train", "--config", CONFIG, "--workdir", str(workdir),
           *tiny_overrides(steps=100000)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "run the same command to resume" in stderr
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] >= 3, stderr[-1500:]
    done = run_cli(["train", "--config", CONFIG, "--workdir", str(workdir), *tiny_overrides(steps=saved[-1] + 2)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from step {saved[-1]}" in done.stderr + done.stdout


def test_nan_loss_stops_clearly_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    args = tiny_overrides(steps=30, **{"train.lr": 1e30, "train.min_lr": 0.0, "train.warmup_steps": 0,
                                       "train.checkpoint_every": 1, "train.grad_clip": 0.0})
    proc = run_cli(["train", "--config", CONFIG, "--workdir", str(workdir), *args])
    assert proc.returncode == 2
    error_lines = [l for l in proc.stderr.splitlines() if l.startswith("gptjax: error:")]
    assert len(error_lines) == 1 and "loss is" in error_lines[0] and "intact" in error_lines[0]
    losses = losses_by_step(workdir)
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert all(np.isfinite(losses[s]) for s in saved if s in losses)
