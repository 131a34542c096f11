"""`gptjax prepare` killed mid-run (the process, or one worker, by SIGKILL) resumes without redoing finished work,
and its output equals an uninterrupted run's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from gptjax.cli import main as gptjax_main
from gptjax.prepare.pipeline import (
    FAULT_KILL_AFTER_PARTS,
    FAULT_KILL_WORKER_AT_PART,
    chunk_files,
    read_report,
    work_dir_for,
)

FIXTURES = Path(__file__).parent / "fixtures"
PARAGRAPHS = [json.loads(line)["text"] for line in
              (FIXTURES / "data" / "dedup" / "inaugural_paragraphs.jsonl").read_text().splitlines()]
FLAGS = ["--workers", "2", "--chunk-mb", "0.004", "--shard-tokens", "6000", "--no-quality", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume_corpus")
    for name, texts in (("a.jsonl", PARAGRAPHS[:45]), ("b.jsonl", PARAGRAPHS[45:] + PARAGRAPHS[:4])):
        (folder / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return folder


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    assert gptjax_main(["prepare", "--input", str(corpus), "--out", str(out), *FLAGS[2:], "--workers", "1"]) == 0
    return out


def prepare_subprocess(corpus: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "gptjax", "prepare", "--input", str(corpus), "--out", str(out), *FLAGS]
    return subprocess.run(command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def finished_parts(out: Path) -> set[int]:
    parts = work_dir_for(out) / "parts"
    return {int(p.name.split(".")[0]) for p in parts.glob("*.done.json")}


def resume_recording_writes(out: Path, corpus: Path, monkeypatch) -> list[int]:
    """Reruns the prepare in this process; returns the chunks whose token parts it wrote."""
    written: list[int] = []
    original = chunk_files.write_token_part

    def recording(parts_dir, chunk, *args):
        written.append(chunk)
        return original(parts_dir, chunk, *args)

    monkeypatch.setattr(chunk_files, "write_token_part", recording)
    assert gptjax_main(["prepare", "--input", str(corpus), "--out", str(out), *FLAGS[2:], "--workers", "1"]) == 0
    return written


def same_output(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for name in names:
        if name == "manifest.json":
            strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}  # noqa: E731
            assert strip(json.loads((a / name).read_text())) == strip(json.loads((b / name).read_text()))
        elif name != "report.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_killed_prepare_process_resumes_without_redoing_parts(corpus, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "out"
    killed = prepare_subprocess(corpus, out, {FAULT_KILL_AFTER_PARTS: "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists(), "the output appears only when complete"
    done_before = finished_parts(out)
    n_chunks = len(list((work_dir_for(out) / "clean").glob("*.done.json")))
    assert len(done_before) >= 3 and n_chunks > len(done_before)
    written = resume_recording_writes(out, corpus, monkeypatch)
    assert not set(written) & done_before, "finished parts are not redone"
    assert sorted(written) == sorted(set(range(n_chunks)) - done_before)
    resume = read_report(out)["resume"]
    assert resume["token_parts"] == {"reused": len(done_before), "computed": n_chunks - len(done_before)}
    assert resume["clean_chunks"] == {"reused": n_chunks, "computed": 0}
    assert not work_dir_for(out).exists()
    same_output(out, uninterrupted)


def test_killed_worker_is_one_clear_error_and_the_rerun_resumes(corpus, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "out"
    failed = prepare_subprocess(corpus, out, {FAULT_KILL_WORKER_AT_PART: "4"})
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith("gptjax: error: a worker process of `gptjax prepare` died")
    assert not out.exists()
    done_before = finished_parts(out)
    assert 4 not in done_before
    for chunk in done_before:
        paths = chunk_files.part_paths(work_dir_for(out) / "parts", chunk)
        assert all(paths[name].is_file() for name in paths), "a done marker is written after its part's files"
    written = resume_recording_writes(out, corpus, monkeypatch)
    assert 4 in written and not set(written) & done_before
    same_output(out, uninterrupted)


def test_changed_settings_start_the_work_over(corpus, tmp_path):
    out = tmp_path / "out"
    assert prepare_subprocess(corpus, out, {FAULT_KILL_AFTER_PARTS: "2"}).returncode == -signal.SIGKILL
    assert finished_parts(out)
    assert gptjax_main(["prepare", "--input", str(corpus), "--out", str(out), *FLAGS[2:], "--workers", "1",
                        "--val-fraction", "0.2"]) == 0
    resume = read_report(out)["resume"]
    assert resume["token_parts"]["reused"] == 0 and resume["clean_chunks"]["reused"] == 0
