"""Exact resume after SIGKILL (also during an async save), checkpoint on SIGTERM, fallback past a corrupt checkpoint,
NaN never poisoning a checkpoint, optimizer-only changes on resume, the LR horizon, one trainer per workdir."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO, run_cli, tiny_overrides

CONFIG = "experiments/shakespeare_char_cpu.py"
ARGS = tiny_overrides(steps=20, **{"train.checkpoint_every": 5, "model.dropout": 0.1})


def losses_by_step(workdir: Path) -> dict[int, float]:
    """The last logged loss per step (a resumed run re-logs the steps after its checkpoint)."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def logged(workdir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if key in r}


def repeated_entries(workdir: Path) -> list[tuple[int, str]]:
    """(step, key) pairs metrics.jsonl holds more than once."""
    seen, repeated = set(), []
    for record in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()):
        for key in record.keys() - {"step"}:
            if (record["step"], key) in seen:
                repeated.append((record["step"], key))
            seen.add((record["step"], key))
    return repeated


def saved_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def train_cli(workdir: Path, args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli(["train", "--config", CONFIG, "--workdir", str(workdir), *args], env_extra)


def train_with_fault(workdir: Path, args: list[str], *fault: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "tests/faults.py", *fault, "--", "--config", CONFIG, "--workdir", str(workdir), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def assert_same_params(a_dir: Path, b_dir: Path) -> None:
    import gptjax

    a, b = gptjax.load(a_dir), gptjax.load(b_dir)
    assert a.step == b.step
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir) -> Path:
    """An uninterrupted 20-step run with checkpoints at 10, 15, 20 (dropout on, so RNG state matters)."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    proc = train_cli(workdir, ARGS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return workdir


def test_resume_after_sigkill_is_bit_identical(straight, tmp_path):
    workdir = tmp_path / "resumed"
    killed = train_with_fault(workdir, ARGS, "--kill-after-step", "13")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert max(losses_by_step(workdir)) < 20
    resumed = train_cli(workdir, ARGS)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 10" in resumed.stderr + resumed.stdout
    assert losses_by_step(straight) == losses_by_step(workdir)
    assert repeated_entries(workdir) == [], "the steps after the checkpoint are logged once, by the resumed run"
    assert_same_params(straight, workdir)


def test_kill_during_an_async_save_resumes_exactly_from_the_previous_checkpoint(straight, tmp_path):
    workdir = tmp_path / "resumed"
    killed = train_with_fault(workdir, ARGS, "--kill-after-step", "15", "--kill-during-save")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert 15 not in saved_steps(workdir), "the save interrupted by SIGKILL must not count as a checkpoint"
    resumed = train_cli(workdir, ARGS)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 10" in resumed.stderr + resumed.stdout
    assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name], "orphaned temp dirs are cleaned"
    assert losses_by_step(straight) == losses_by_step(workdir)
    assert_same_params(straight, workdir)


def test_corrupt_latest_checkpoint_falls_back_with_a_warning_and_is_never_deleted(straight, tmp_path, capfd):
    import gptjax

    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    before = losses_by_step(workdir)
    for path in (workdir / "checkpoints" / "20" / "params").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    lm = gptjax.load(workdir)
    assert lm.step == 15
    assert "checkpoint step 20" in capfd.readouterr().err
    resumed = train_cli(workdir, ARGS)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    warnings = [line for line in resumed.stderr.splitlines() if "cannot be restored" in line]
    assert len(warnings) == 1 and "step 20" in warnings[0] and "falling back to step 15" in warnings[0]
    assert "resuming from step 15" in resumed.stderr + resumed.stdout
    assert list((workdir / "checkpoints_unreadable").iterdir()), "the unreadable checkpoint is kept, set aside"
    assert losses_by_step(workdir) == before
    assert_same_params(straight, workdir)


def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(straight, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    for step in saved_steps(workdir):
        for path in (workdir / "checkpoints" / str(step)).rglob("*"):
            if path.is_file():
                path.write_bytes(b"")
    proc = train_cli(workdir, ARGS)
    assert proc.returncode == 2
    assert "no checkpoint in" in proc.stderr and "nothing was deleted" in proc.stderr
    assert saved_steps(workdir) == [10, 15, 20]


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, cache_dir):
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
    stopped_at = saved_steps(workdir)[-1]
    assert stopped_at >= 3, stderr[-1500:]
    end = stopped_at + 3
    done = train_cli(workdir, tiny_overrides(steps=end))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from step {stopped_at}" in done.stderr + done.stdout
    # The uninterrupted twin uses the horizon the interrupted run started with (train.steps=100000).
    twin = tmp_path / "twin"
    ran = train_cli(twin, tiny_overrides(steps=end, **{"train.schedule_steps": 100000}))
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert losses_by_step(twin) == losses_by_step(workdir)
    assert_same_params(twin, workdir)


def test_nan_never_poisons_a_checkpoint_and_a_changed_lr_resumes(tmp_path, cache_dir):
    import gptjax

    workdir = tmp_path / "run"
    base = {"train.checkpoint_every": 1, "train.grad_clip": 0.0, "train.warmup_steps": 0, "train.schedule": "constant"}
    assert train_cli(workdir, tiny_overrides(steps=6, **base)).returncode == 0
    diverging = train_cli(workdir, tiny_overrides(steps=12, **{**base, "train.lr": 1e30}))
    assert diverging.returncode == 2, diverging.stderr[-2000:]
    assert "changed at step 6: train.lr 0.001 -> 1e+30" in diverging.stderr
    errors = [line for line in diverging.stderr.splitlines() if line.startswith("gptjax: error:")]
    assert len(errors) == 1 and "step 6) is intact" in errors[0] and "--config.train.lr=" in errors[0], errors
    assert saved_steps(workdir)[-1] == 6
    ids = [[int(i) for i in np.random.default_rng(0).integers(0, 60, 17)]]
    for step in saved_steps(workdir):
        lm = gptjax.load(workdir, step=step)
        assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree_util.tree_leaves(lm.params))
        assert np.isfinite(lm.token_logprobs(ids)[0]).all()
    # The advice is followable: the same workdir with a lower lr resumes, and the change is recorded.
    recovered = train_cli(workdir, tiny_overrides(steps=12, **{**base, "train.lr": 5e-4}))
    assert recovered.returncode == 0, recovered.stderr[-2000:]
    assert "resuming from step 6" in recovered.stderr + recovered.stdout
    changes = json.loads((workdir / "record.json").read_text())["changes"]
    assert changes == ["changed at step 6: train.lr 0.001 -> 1e+30", "changed at step 6: train.lr 0.001 -> 0.0005"]
    assert gptjax.load(workdir).step == 12


def test_extending_steps_keeps_the_lr_horizon_and_says_so(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    args = {"train.warmup_steps": 2, "train.lr": 3e-3, "train.min_lr": 3e-4, "train.decay_steps": 0}
    assert train_cli(workdir, tiny_overrides(steps=10, **args)).returncode == 0
    first = logged(workdir, "lr")
    extended = train_cli(workdir, tiny_overrides(steps=16, **args))
    assert extended.returncode == 0, extended.stderr[-2000:]
    assert "keeps its horizon of 10 steps" in extended.stderr
    lrs = logged(workdir, "lr")
    assert all(lrs[s] == first[s] for s in first)
    assert all(abs(lrs[s] - 3e-4) < 1e-9 for s in range(11, 17))
    assert json.loads((workdir / "config.json").read_text())["train"]["schedule_steps"] == 10


def test_a_second_trainer_on_a_workdir_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path, cache_dir):
    from gptjax import fileio
    from gptjax.train.run import LOCK_FILE

    workdir = tmp_path / "run"
    workdir.mkdir()
    with fileio.exclusive_lock(workdir / LOCK_FILE, "test holder"):
        refused = train_cli(workdir, tiny_overrides(steps=2))
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("gptjax: error:")]
    assert len(errors) == 1 and "is in use by pid" in errors[0] and str(os.getpid()) in errors[0]
    assert not (workdir / "checkpoints").exists()
    (workdir / LOCK_FILE).write_text("pid 999999 on some-host since 2026-01-01 00:00:00")
    taken = train_cli(workdir, tiny_overrides(steps=2))
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert "taking over the lock" in taken.stderr and "999999" in taken.stderr
    assert not (workdir / LOCK_FILE).exists()


def test_spike_skipping_turned_on_or_off_on_resume_restores_the_checkpoint(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    base = {"train.checkpoint_every": 3}
    assert train_cli(workdir, tiny_overrides(steps=3, **base)).returncode == 0
    on = train_cli(workdir, tiny_overrides(steps=6, **base, **{"train.spike_factor": 5.0}))
    assert on.returncode == 0, on.stderr[-2000:]
    assert "resuming from step 3" in on.stderr and "cannot be restored" not in on.stderr
    assert "changed at step 3: train.spike_factor 0.0 -> 5.0" in on.stderr
    assert set(logged(workdir, "skipped_steps")) == {4, 5, 6}, "statistics start at zero where none were saved"
    off = train_cli(workdir, tiny_overrides(steps=9, **base))
    assert off.returncode == 0, off.stderr[-2000:]
    assert "resuming from step 6" in off.stderr and "cannot be restored" not in off.stderr
    assert not (workdir / "checkpoints_unreadable").exists() and saved_steps(workdir)[-1] == 9


def test_a_workdir_whose_checkpoints_vanished_is_refused_not_restarted(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    assert train_cli(workdir, tiny_overrides(steps=3, **{"train.checkpoint_every": 3})).returncode == 0
    shutil.rmtree(workdir / "checkpoints")
    metrics = (workdir / "metrics.jsonl").read_text()
    proc = train_cli(workdir, tiny_overrides(steps=6, **{"train.checkpoint_every": 3}))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gptjax: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "checkpoints/ is gone" in errors[0], proc.stderr[-2000:]
    assert (workdir / "metrics.jsonl").read_text() == metrics and not (workdir / "checkpoints").exists()


def test_metrics_of_steps_after_the_resume_point_are_dropped_once(tmp_path):
    from gptjax.train.metrics import drop_steps_after

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 3}\n{"step": 2, "loss": 2}\n{"step": 2, "val_loss": 2.5}\n{"step": 3, "lo')
    drop_steps_after(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 3}\n{"step": 2, "loss": 2}\n{"step": 2, "val_loss": 2.5}\n'
    path.write_text('{"step": 1, "loss": 3}')
    drop_steps_after(path, 1)
    assert path.read_text() == '{"step": 1, "loss": 3}\n', "a last line without its newline gets one"
    drop_steps_after(path, 0)
    assert path.read_text() == "", "a run starting at step 0 logs every step again"


def test_data_replaced_in_place_is_refused_on_resume_unless_allowed(tmp_path, cache_dir):
    text = (REPO / "gptjax" / "data" / "bundled" / "tinyshakespeare.txt").read_text()[:60000]
    (tmp_path / "corpus.txt").write_text(text)
    data = tmp_path / "data"

    def prepare(val_fraction: str) -> None:
        shutil.rmtree(data, ignore_errors=True)
        proc = run_cli(["prepare", "--input", str(tmp_path / "corpus.txt"), "--out", str(data), "--raw", "--quiet",
                        "--txt-mode", "blank_lines", "--val-fraction", val_fraction])
        assert proc.returncode == 0, proc.stderr[-2000:]

    prepare("0.1")
    workdir = tmp_path / "run"
    args = tiny_overrides(steps=3, **{"train.checkpoint_every": 3, "data.dataset": "", "data.path": str(data)})
    assert train_cli(workdir, args).returncode == 0
    prepare("0.2")  # the same path now holds other data
    more = tiny_overrides(steps=6, **{"train.checkpoint_every": 3, "data.dataset": "", "data.path": str(data)})
    refused = train_cli(workdir, more)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("gptjax: error:")]
    assert refused.returncode == 2 and len(errors) == 1, refused.stderr[-2000:]
    assert "is not the data" in errors[0] and "--allow-data-change" in errors[0]
    assert saved_steps(workdir) == [3]
    allowed = train_cli(workdir, [*more, "--allow-data-change"])
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    changes = json.loads((workdir / "record.json").read_text())["changes"]
    assert len(changes) == 1 and changes[0].startswith("changed at step 3: data ")
    assert "--allow-data-change" in changes[0]
    assert saved_steps(workdir)[-1] == 6


def test_only_an_unreadable_checkpoint_is_bad_a_transient_error_is_retried_then_raised(tmp_path, monkeypatch):
    import errno

    from gptjax import checkpoint
    from gptjax.errors import GptjaxError

    monkeypatch.setattr(checkpoint, "RETRY_WAIT_S", 0.0)
    calls = []

    def flaky(failures: dict[int, list[BaseException]]):
        def restore(step: int):
            calls.append(step)
            if failures.get(step):
                raise failures[step].pop(0)
            return f"state {step}"
        return restore

    # A read that fails once with EIO is read again; nothing counts as bad.
    restore = flaky({20: [OSError(errno.EIO, "Input/output error")]})
    assert checkpoint.newest_restorable([10, 20], restore, tmp_path) == (20, "state 20", [])
    assert calls == [20, 20]
    # Failing every time for the machine's reasons: one error, no fallback, nothing set aside.
    calls.clear()
    restore = flaky({20: [MemoryError()] * 3})
    with pytest.raises(GptjaxError, match="failed 3 times .*MemoryError.*nothing was moved"):
        checkpoint.newest_restorable([10, 20], restore, tmp_path)
    assert calls == [20, 20, 20]
    # tensorstore's transient status codes count as the machine's too.
    assert checkpoint.is_transient(ValueError("UNAVAILABLE: connection reset while reading params"))
    # A checkpoint that is itself unreadable falls back at once.
    calls.clear()
    restore = flaky({20: [json.JSONDecodeError("Expecting value", "", 0)], 15: [FileNotFoundError("params")]})
    assert checkpoint.newest_restorable([10, 15, 20], restore, tmp_path) == (10, "state 10", [20, 15])
    assert calls == [20, 15, 10]
