"""gs:// workdirs and data against a local GCS emulator (gcp-storage-emulator through tests/gcs_emulator.py, in memory,
on a free localhost port): gcsfs reaches it through STORAGE_EMULATOR_HOST, orbax's tensorstore through
TENSORSTORE_GCS_HTTP_URL. Training, bit-identical resume, a corrupt checkpoint, eval, load and export run on it
(how gs:// data is streamed: tests/test_gcs_streaming.py).
Authentication, which the emulator does not ask for, is tested with a stub raising the real exception types; the
lock's heartbeat and take-over on fsspec's memory:// filesystem, where they run in milliseconds.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import (
    GCS_BUCKET,
    REPO,
    FailAfterStep,
    free_port,
    gcs_lines,
    gcs_losses,
    run_cli,
    same_params,
    tiny_config,
    tiny_overrides,
)

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

CONFIG = "experiments/shakespeare_char_cpu.py"


@pytest.fixture(scope="session")
def gcs_data(gcs, shakespeare_dir) -> str:
    """The bundled Shakespeare, prepared locally, uploaded to gs://GCS_BUCKET/data/shakespeare."""
    url = f"gs://{GCS_BUCKET}/data/shakespeare"
    gcs.put(str(shakespeare_dir), url, recursive=True)
    return url


def gcs_config(cache_dir, data_url: str, **train):
    cfg = tiny_config(cache_dir, model={"dropout": 0.1},
                      train={"steps": 20, "checkpoint_every": 5, "eval_every": 10, **train})
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=data_url))


@pytest.fixture(scope="session")
def straight_gcs(gcs, gcs_data, cache_dir) -> str:
    """An uninterrupted 20-step run (checkpoints 10, 15, 20; dropout on) in a gs:// workdir on gs:// data."""
    from gptjax.train.loop import train

    workdir = f"gs://{GCS_BUCKET}/runs/straight"
    train(gcs_config(cache_dir, gcs_data), workdir, show_progress=False)
    return workdir


def test_a_gs_run_writes_its_files_and_reads_its_data_through_a_local_view(gcs, gcs_data, straight_gcs, cache_dir,
                                                                           shakespeare_dir):
    from gptjax.data import loader
    from gptjax.data.sources import local_data_dir

    gcs.invalidate_cache()
    names = {p.split("/runs/straight/", 1)[1] for p in gcs.find(straight_gcs)}
    assert {"config.json", "record.json", "metrics.jsonl", "tokenizer/tokenizer.json"} <= names
    assert {"checkpoints/10/_CHECKPOINT_METADATA", "checkpoints/20/_CHECKPOINT_METADATA"} <= names
    assert not any(".tmp-" in n or n.endswith(".lock") for n in names), "no temp files, the lock released"
    assert json.loads(gcs.cat_file(f"{straight_gcs}/config.json"))["data"]["path"] == gcs_data
    assert max(gcs_losses(gcs, straight_gcs)) == 20
    local = local_data_dir(gcs_data)
    assert local.parent == cache_dir / "remote" and local == local_data_dir(gcs_data), "one view, reused"
    assert not list(local.rglob("*.bin")), "the token shards are read from gs://, never copied"
    np.testing.assert_array_equal(loader.eval_batches(local, 16, 8, 2), loader.eval_batches(shakespeare_dir, 16, 8, 2))


def test_a_gs_run_resumes_bit_identically_from_its_gs_checkpoint(gcs, gcs_data, straight_gcs, cache_dir, capfd):
    import gptjax
    from gptjax.train.loop import train

    workdir = f"gs://{GCS_BUCKET}/runs/interrupted"
    cfg = gcs_config(cache_dir, gcs_data)
    with pytest.raises(RuntimeError, match="crash after step 13"):
        train(cfg, workdir, show_progress=False, hooks=[FailAfterStep(13)])
    assert max(gcs_losses(gcs, workdir)) == 13
    capfd.readouterr()
    train(cfg, workdir, show_progress=False)
    assert "resuming from step 10" in capfd.readouterr().err
    assert gcs_losses(gcs, workdir) == gcs_losses(gcs, straight_gcs)
    same_params(gptjax.load(workdir), gptjax.load(straight_gcs))


def test_eval_load_and_export_read_a_gs_workdir(gcs, straight_gcs, tmp_path, capsys):
    import gptjax
    from gptjax.cli import main

    lm = gptjax.load(straight_gcs)
    assert lm.step == 20 and lm.meta["data_dir"].startswith("gs://")
    assert main(["eval", "--workdir", straight_gcs, "--max-tokens", "2000"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["split"] == "val" and np.isfinite(result["loss"])
    assert main(["export", "--workdir", straight_gcs, "--format", "safetensors", "--out", str(tmp_path / "exp")]) == 0
    same_params(gptjax.load(tmp_path / "exp"), lm)
    exported = f"gs://{GCS_BUCKET}/exports/straight"
    gcs.put(str(tmp_path / "exp"), exported, recursive=True)
    same_params(gptjax.load(exported), lm)  # through a local cache copy, as a gs:// dataset


def test_a_corrupt_gs_checkpoint_falls_back_and_is_set_aside_not_deleted(gcs, gcs_data, straight_gcs, cache_dir,
                                                                        capfd):
    import gptjax
    from gptjax.train.loop import train

    workdir = f"gs://{GCS_BUCKET}/runs/corrupt"
    gcs.copy(straight_gcs, workdir, recursive=True)
    for path in gcs.find(f"{workdir}/checkpoints/20/params"):
        data = gcs.cat_file(path)
        if data:
            gcs.pipe_file(path, data[: len(data) // 3])
    assert gptjax.load(workdir).step == 15
    capfd.readouterr()
    train(gcs_config(cache_dir, gcs_data), workdir, show_progress=False)
    err = capfd.readouterr().err
    assert "cannot be restored" in err and "resuming from step 15" in err
    gcs.invalidate_cache()
    assert gcs.find(f"{workdir}/checkpoints_unreadable"), "the unreadable checkpoint is kept, set aside"
    same_params(gptjax.load(workdir), gptjax.load(straight_gcs))


def test_workdir_files_and_tensorboard_events_are_objects_written_through_fileio(gcs):
    from gptjax import fileio
    from gptjax.data import tokenizer as tokenizers
    from gptjax.train.metrics import MetricWriter

    workdir = fileio.as_path(f"gs://{GCS_BUCKET}/runs/files")
    fileio.write_json_atomic(workdir / "config.json", {"a": 1})
    assert fileio.read_json(workdir / "config.json", "config", "fix it") == {"a": 1}
    gcs.pipe_file(f"{GCS_BUCKET}/runs/files/bad.json", b"{not json")
    with pytest.raises(Exception, match="is corrupt"):
        fileio.read_json(workdir / "bad.json", "record", "move it aside")
    tok = tokenizers.train_tokenizer("char", ["hello world"], 0)
    tokenizers.save(tok, workdir / "tokenizer")
    assert {n: gcs.cat_file(f"{GCS_BUCKET}/runs/files/tokenizer/{n}") for n in tok.files()} == tok.files()
    writer = MetricWriter(workdir, tensorboard=True)
    writer.write(1, {"loss": 2.5})
    writer.sync()
    assert gcs_lines(gcs, f"{GCS_BUCKET}/runs/files/metrics.jsonl") == [{"step": 1, "loss": 2.5}]
    writer.write(2, {"loss": 2.0})
    writer.close()
    assert [r["step"] for r in gcs_lines(gcs, f"{GCS_BUCKET}/runs/files/metrics.jsonl")] == [1, 2]
    events = gcs.find(f"{GCS_BUCKET}/runs/files/tensorboard")
    assert len(events) == 1 and "tfevents" in events[0] and gcs.size(events[0]) > 0
    assert not [p for p in gcs.find(f"{GCS_BUCKET}/runs/files") if ".tmp-" in p], \
        "one upload per write, no temp objects"


def test_a_gs_datasets_view_is_made_once_in_the_local_cache_keyed_by_its_generations(gcs, gcs_data, cache_dir,
                                                                                    shakespeare_dir, capfd):
    from gptjax.config import DataConfig
    from gptjax.data import loader
    from gptjax.data.sources import local_data_dir
    from gptjax.errors import GptjaxError
    from gptjax.prepare.resolve import resolve_data

    url = f"gs://{GCS_BUCKET}/data/copied-once"  # not gcs_data, which the training runs above have copied already
    gcs.put(str(shakespeare_dir), url, recursive=True)
    local = resolve_data(DataConfig(path=url, cache_dir=str(cache_dir)))
    assert local.parent == cache_dir / "remote" and "copying" in capfd.readouterr().err
    assert local_data_dir(url) == local and "copying" not in capfd.readouterr().err, "reused"
    np.testing.assert_array_equal(loader.eval_batches(local, 16, 8, 2), loader.eval_batches(shakespeare_dir, 16, 8, 2))
    changed = f"gs://{GCS_BUCKET}/data/changed"
    gcs.put(str(shakespeare_dir), changed, recursive=True)
    first = local_data_dir(changed)
    gcs.pipe_file(f"{GCS_BUCKET}/data/changed/report.json", b"{}")
    assert local_data_dir(changed) != first, "a rewritten object (new generation) is fetched again"
    with pytest.raises(GptjaxError, match="holds no prepared data"):
        local_data_dir(f"gs://{GCS_BUCKET}/data/nothing-here")


def test_a_second_trainer_on_a_gs_workdir_in_use_is_refused(gcs, gcs_data, cache_dir):
    from gptjax import fileio
    from gptjax.errors import GptjaxError
    from gptjax.train.loop import train
    from gptjax.train.run import LOCK_FILE

    workdir = f"gs://{GCS_BUCKET}/runs/locked"
    with fileio.exclusive_lock(f"{workdir}/{LOCK_FILE}", "test holder"):
        with pytest.raises(GptjaxError, match=f"is in use by pid {os.getpid()}"):
            train(gcs_config(cache_dir, gcs_data, steps=2), workdir, show_progress=False)
    gcs.invalidate_cache()
    assert not gcs.exists(f"{workdir}/checkpoints") and not gcs.exists(f"{workdir}/{LOCK_FILE}")


@pytest.mark.slow
def test_sigkill_leaves_a_lock_object_that_the_resumed_run_takes_over(gcs, gcs_data, straight_gcs):
    from gptjax.train.run import LOCK_FILE

    workdir = f"gs://{GCS_BUCKET}/runs/killed"
    args = ["--config", CONFIG, "--workdir", workdir, *tiny_overrides(steps=20, **{
        "train.checkpoint_every": 5, "train.eval_every": 10, "train.batch_size": 8, "model.n_head": 4,
        "model.dropout": 0.1, "data.path": gcs_data})]
    killed = subprocess.run([sys.executable, "tests/faults.py", "--kill-after-step", "13", "--", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    gcs.invalidate_cache()
    assert gcs.exists(f"{workdir}/{LOCK_FILE}"), "a killed process cannot remove its lock object"
    resumed = run_cli(["train", *args])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "taking over the lock" in resumed.stderr and "resuming from step 10" in resumed.stderr
    assert sorted(gcs_losses(gcs, workdir)) == list(range(1, 21))
    assert not gcs.exists(f"{workdir}/{LOCK_FILE}")


def test_a_nonexistent_bucket_is_one_error_line_and_exit_2(gcs):
    proc = run_cli(["train", "--config", CONFIG, "--workdir", "gs://no-such-bucket/run", *tiny_overrides(steps=2)])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gptjax: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "bucket gs://no-such-bucket does not exist" in errors[0] and "gcloud storage buckets create" in errors[0]
    from gptjax.cli import main

    assert main(["eval", "--workdir", "gs://no-such-bucket/run"]) == 2
    assert main(["train", "--config", CONFIG, "--workdir", "gs://no-such-bucket/run", "--config.data.path",
                 "gs://no-such-bucket/data"]) == 2


# `gptjax` with gcsfs's back-off sleeps between its retries skipped (they add ~70 s when nothing answers).
GPTJAX_WITHOUT_BACKOFF = ("import sys, types, gcsfs.retry\n"
                          "async def no_wait(seconds):\n    pass\n"
                          "gcsfs.retry.asyncio = types.SimpleNamespace(sleep=no_wait)\n"
                          "from gptjax.cli import main\n"
                          "sys.exit(main(sys.argv[1:]))")


def test_an_unreachable_storage_service_is_one_error_line_and_exit_2(gcs):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.run([sys.executable, "-c", GPTJAX_WITHOUT_BACKOFF, "eval", "--workdir",
                           f"gs://{GCS_BUCKET}/runs/straight"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STORAGE_EMULATOR_HOST": dead, "TENSORSTORE_GCS_HTTP_URL": dead})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gptjax: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "cannot reach the storage emulator" in errors[0] and "check the network" in errors[0]


class _DeniedFs:
    """A stand-in filesystem that fails the way gcsfs does without credentials (the emulator never asks for any)."""

    def __init__(self, error: BaseException):
        self.error = error

    def exists(self, path):
        raise self.error


@pytest.mark.parametrize("kind", ["no_credentials", "forbidden"])
def test_missing_credentials_are_one_error_naming_what_to_do(monkeypatch, kind):
    import google.auth.exceptions
    from gcsfs.retry import HttpError

    from gptjax import fileio
    from gptjax.errors import GptjaxError

    error = (google.auth.exceptions.DefaultCredentialsError("Your default credentials were not found")
             if kind == "no_credentials" else HttpError({"code": 403, "message": "caller does not have access"}))
    monkeypatch.setattr(fileio, "_remote_fs", lambda url: (_DeniedFs(error), url.split("://", 1)[1]))
    with pytest.raises(GptjaxError) as raised:
        fileio.check_remote_root("gs://bucket/run", "--workdir")
    message = str(raised.value)
    assert "\n" not in message and "no access to bucket gs://bucket" in message
    assert "gcloud auth application-default login" in message and "GOOGLE_APPLICATION_CREDENTIALS" in message


# ---- the object lock and appended objects on fsspec's memory:// (which honours create-only writes) -------------


def test_an_object_lock_is_exclusive_refreshed_and_taken_over_when_stale(monkeypatch, capfd):
    import fsspec

    from gptjax import fileio
    from gptjax.errors import GptjaxError

    url = "memory://gptjax-lock-test/run/.lock"
    fs = fsspec.filesystem("memory")
    monkeypatch.setattr(fileio, "LOCK_HEARTBEAT_S", 0.05)
    with fileio.exclusive_lock(url, "workdir W"):
        with pytest.raises(GptjaxError, match=f"workdir W is in use by pid {os.getpid()}"):
            with fileio.exclusive_lock(url, "workdir W"):
                pass
        with pytest.raises(FileExistsError):  # the precondition that guards the race between two takers
            fs.pipe_file("/gptjax-lock-test/run/.lock", b"x", mode="create")
        first = fs.info("/gptjax-lock-test/run/.lock")["created"]
        time.sleep(0.3)
        assert fs.info("/gptjax-lock-test/run/.lock")["created"] > first, "the heartbeat refreshes the object"
    assert not fs.exists("/gptjax-lock-test/run/.lock"), "released on exit"

    fs.pipe_file("/gptjax-lock-test/run/.lock", f"pid 999999 on {socket.gethostname()} since then".encode())
    with fileio.exclusive_lock(url, "workdir W"):  # a dead process of this host: taken over at once
        pass
    assert "taking over the lock of workdir W left by pid 999999" in capfd.readouterr().err

    fs.pipe_file("/gptjax-lock-test/run/.lock", b"pid 1 on another-host since then")
    with pytest.raises(GptjaxError, match="in use by pid 1 on another-host"):
        with fileio.exclusive_lock(url, "workdir W"):
            pass
    monkeypatch.setattr(fileio, "LOCK_STALE_S", 0.0)  # its heartbeat stopped: taken over
    with fileio.exclusive_lock(url, "workdir W"):
        pass
    assert "left by pid 1 on another-host" in capfd.readouterr().err


def test_an_appended_object_is_uploaded_throttled_and_always_on_sync():
    import fsspec

    from gptjax import fileio

    url = "memory://gptjax-append-test/metrics.jsonl"
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/gptjax-append-test/metrics.jsonl", b"old\n")
    out = fileio.ObjectAppender(url, interval_s=3600)
    out.write("a\n")
    out.flush()
    assert fs.cat_file("/gptjax-append-test/metrics.jsonl") == b"old\n", "throttled"
    out.sync()
    assert fs.cat_file("/gptjax-append-test/metrics.jsonl") == b"old\na\n"
    out.write("b\n")
    out.close()
    assert fs.cat_file("/gptjax-append-test/metrics.jsonl") == b"old\na\nb\n"
    fileio.write_text_atomic(url, "whole\n")
    assert fs.cat_file("/gptjax-append-test/metrics.jsonl") == b"whole\n"
