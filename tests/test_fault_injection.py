"""Fault injection over every write a verb makes, in the spirit of SQLite's I/O-error tests.

A complete run of each verb lists the write sites it reaches below the test's directory (a file opened for writing,
the fsync that makes it durable, a rename onto a name, an orbax checkpoint save); then, for each kind of site in
turn, a run of the verb fails at the first site of that kind. A kind is the operation and the code path that reached
it (the writing frame's file and line, and those of the gptjax frames above it): a loop writing one file per tensor
or fsyncing every file of a folder is one code path writing another name, and its first write stands for the rest.
The error cycles over ENOSPC, EACCES and EIO.
Each failed run must exit 2 with one `gptjax: error:` line and no traceback, leave no partial output visible and the
workdir unlocked; the same command run again without the fault must then give what an uninterrupted run gives."""
from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tiny_overrides

from gptjax.cli import main

ERRNOS = (errno.ENOSPC, errno.EACCES, errno.EIO)
MAX_SITES = 200  # a verb reaching more write sites than this is a finding in itself
FIXTURE_TASKS = REPO / "tests" / "fixtures" / "eval"


class WriteFaults:
    """Records the kinds of the write sites under `root` this process reaches; fails the first site of `fail_kind`
    (None: none) with the `fail_at`-th error of ERRNOS."""

    def __init__(self, root: Path, fail_kind: tuple | None = None, fail_at: int = 0):
        self.root, self.fail_kind, self.fail_at = str(root), fail_kind, fail_at
        self.failed: tuple[int, str] | None = None
        self.site_kinds: list[tuple] = []  # (operation, call path) per site reached

    @property
    def seen(self) -> int:
        return len(self.site_kinds)

    def hit(self, path, operation: str) -> None:
        if not str(path).startswith(self.root):
            return
        kind = (operation, call_path())
        self.site_kinds.append(kind)
        if kind == self.fail_kind and self.failed is None:
            code = ERRNOS[self.fail_at % len(ERRNOS)]
            self.failed = (code, str(path))
            raise OSError(code, os.strerror(code), str(path))

    def install(self, monkeypatch) -> None:
        import orbax.checkpoint as ocp

        real_open, real_replace, real_rename, real_fsync = builtins.open, os.replace, os.rename, os.fsync
        real_save = ocp.CheckpointManager.save

        def open_(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
                self.hit(os.fspath(file), "open")
            return real_open(file, mode, *args, **kwargs)

        def replace(src, dst, *args, **kwargs):
            self.hit(os.fspath(dst), "replace")
            return real_replace(src, dst, *args, **kwargs)

        def rename(src, dst, *args, **kwargs):
            self.hit(os.fspath(dst), "rename")
            return real_rename(src, dst, *args, **kwargs)

        def fsync(fd):
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            if not os.path.isdir(path):  # a folder's fsync is best effort in gptjax.fileio
                self.hit(path, "fsync")
            return real_fsync(fd)

        def save(manager, step, *args, **kwargs):
            self.hit(str(manager.directory / str(step)), "save")
            return real_save(manager, step, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def call_path() -> tuple[tuple[str, int], ...]:
    """(file, line) of the frame that wrote and of every gptjax frame above it in the calling thread (the frames of
    event loops and thread pools between them vary with scheduling, so they are left out)."""
    frame, frames = sys._getframe(1), []
    while frame is not None:
        name = frame.f_code.co_filename
        if name != __file__ and (not frames or f"{os.sep}gptjax{os.sep}" in name):
            frames.append((name, frame.f_lineno))
        frame = frame.f_back
    return tuple(frames)


def run_verb(argv: list[str], faults: WriteFaults, capsys, monkeypatch) -> tuple[int, list[str], WriteFaults]:
    """`gptjax ARGV` in this process with `faults` installed; (exit code, the stderr lines, the faults)."""
    before = set(threading.enumerate())
    with monkeypatch.context() as patch:
        faults.install(patch)
        code = main(argv)  # an exception escaping main would be a traceback for the user: the test fails on it
        for thread in set(threading.enumerate()) - before:  # a failed save's writers, which process exit would stop
            if not thread.name.startswith(("grain-prefetch", "tqdm")):  # those wait for work that never comes
                thread.join(timeout=30)
    return code, capsys.readouterr().err.splitlines(), faults


def sweep(argv: list[str], root: Path, capsys, monkeypatch, after_fault, undo_complete_run=None) -> int:
    """Runs `argv` once whole to list its write sites (then `undo_complete_run()`, by default removing `root`), then
    fails the first site of each kind in turn; `after_fault(n)` checks what the n-th failed run left. Returns the
    number of write sites the complete run reached."""
    code, err, complete = run_verb(argv, WriteFaults(root), capsys, monkeypatch)
    assert code == 0, err
    assert complete.seen <= MAX_SITES, f"{argv[0]} reaches more than {MAX_SITES} write sites"
    if undo_complete_run is None:
        shutil.rmtree(root)
    else:
        undo_complete_run()
    for fail_at, kind in enumerate(dict.fromkeys(complete.site_kinds), start=1):
        code, err, faults = run_verb(argv, WriteFaults(root, kind, fail_at), capsys, monkeypatch)
        assert faults.failed is not None, (kind, "a complete run reached this site; this one did not")
        errors = [line for line in err if line.startswith("gptjax: error:")]
        assert code == 2 and len(errors) == 1, (kind, faults.failed, err)
        assert not any("Traceback" in line for line in err), err
        assert os.strerror(faults.failed[0]) in errors[0], "the line says what the machine refused"
        after_fault(fail_at, errors[0])
    return complete.seen


def names_below(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


def visible_below(path: Path) -> set[str]:
    """What a user sees below `path`: hidden names (a failed attempt's staging folder, which writers it left running
    may still fill; the next attempt removes it) left out."""
    return {name for name in names_below(path) if not any(part.startswith(".") for part in Path(name).parts)}


# ---- train ---------------------------------------------------------------------------------------------------------

TRAIN_ARGS = tiny_overrides(steps=2, **{"train.checkpoint_every": 2, "train.eval_every": 2})


def test_train_survives_a_failing_write_anywhere(tmp_path, cache_dir, capsys, monkeypatch):
    import gptjax
    from gptjax import fileio
    from gptjax.train.run import LOCK_FILE

    reference = tmp_path / "reference"
    assert main(["train", "--config", "experiments/shakespeare_char_cpu.py", "--workdir", str(reference),
                 *TRAIN_ARGS]) == 0
    expected = gptjax.load(reference)
    workdir = tmp_path / "faulty" / "run"
    argv = ["train", "--config", "experiments/shakespeare_char_cpu.py", "--workdir", str(workdir), *TRAIN_ARGS]

    def after_fault(fail_at: int, error: str) -> None:
        if workdir.exists():
            with fileio.exclusive_lock(workdir / LOCK_FILE, "the test"):  # released by the failed run
                pass
        # the same command without the fault finishes the run as an uninterrupted one would have
        assert main(argv) == 0, capsys.readouterr().err
        capsys.readouterr()
        resumed = gptjax.load(workdir)
        assert resumed.step == expected.step
        for a, b in zip(jax_leaves(resumed.params), jax_leaves(expected.params)):
            np.testing.assert_array_equal(a, b)
        losses = {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
                  if "loss" in r}
        assert losses == reference_losses, (fail_at, error)
        shutil.rmtree(workdir.parent)

    reference_losses = {r["step"]: r["loss"] for r in
                        map(json.loads, (reference / "metrics.jsonl").read_text().splitlines()) if "loss" in r}
    sites = sweep(argv, tmp_path / "faulty", capsys, monkeypatch, after_fault)
    assert sites >= 6, "config, record, tokenizer, metrics and a checkpoint at least"


def jax_leaves(tree) -> list[np.ndarray]:
    import jax

    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


# ---- eval, export, import --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    workdir = tmp_path_factory.mktemp("fault_trained") / "run"
    assert main(["train", "--config", "experiments/shakespeare_char_cpu.py", "--workdir", str(workdir),
                 *tiny_overrides(steps=2, **{"model.block_size": 64})]) == 0
    return workdir


def test_eval_outputs_appear_whole_or_not_at_all(gpt2_bpe_model, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "outputs"
    argv = ["eval", "--workdir", str(gpt2_bpe_model["gptjax"]), "--tasks", "lambada", "--data-dir", str(FIXTURE_TASKS),
            "--limit", "4", "--out", str(out_dir / "results.json"), "--log-samples", str(out_dir / "samples.jsonl")]
    assert main(argv) == 0
    expected = json.loads((out_dir / "results.json").read_text())["results"]
    samples = (out_dir / "samples.jsonl").read_text()
    shutil.rmtree(out_dir)

    def after_fault(fail_at: int, error: str) -> None:
        assert names_below(out_dir) <= {"samples.jsonl"}, "no partial file: results.json comes last, whole"
        if (out_dir / "samples.jsonl").exists():
            assert (out_dir / "samples.jsonl").read_text() == samples
        assert main(argv) == 0
        capsys.readouterr()
        assert json.loads((out_dir / "results.json").read_text())["results"] == expected
        shutil.rmtree(out_dir)

    assert sweep(argv, out_dir, capsys, monkeypatch, after_fault) >= 2


def exported_content(directory: Path) -> dict:
    """What an export holds, comparable across runs: tensors by name, JSON parsed (the marker's time left out),
    other files as bytes (safetensors headers keep their metadata in no fixed order)."""
    from safetensors.numpy import load_file

    content = {}
    for name in sorted(names_below(directory)):
        path = directory / name
        if path.suffix == ".safetensors":
            content[name] = {key: value.tobytes() for key, value in load_file(path).items()}
        elif path.suffix == ".json":
            content[name] = {k: v for k, v in json.loads(path.read_text()).items() if k != "created"}
        elif path.is_file():
            content[name] = path.read_bytes()
    return content


@pytest.mark.parametrize("fmt", ["safetensors", "hf"])
def test_export_is_whole_or_absent(trained, tmp_path, capsys, monkeypatch, fmt):
    reference = tmp_path / "reference"
    assert main(["export", "--workdir", str(trained), "--format", fmt, "--out", str(reference)]) == 0
    out = tmp_path / "faulty" / "export"
    argv = ["export", "--workdir", str(trained), "--format", fmt, "--out", str(out)]

    def after_fault(fail_at: int, error: str) -> None:
        assert visible_below(tmp_path / "faulty") == set(), "nothing of a failed export is visible"
        assert main(argv) == 0
        capsys.readouterr()
        assert exported_content(out) == exported_content(reference)
        shutil.rmtree(out)

    assert sweep(argv, tmp_path / "faulty", capsys, monkeypatch, after_fault) >= 3


def test_import_is_whole_or_absent(trained, tmp_path, capsys, monkeypatch):
    import gptjax

    hf_dir = tmp_path / "hf"
    assert main(["export", "--workdir", str(trained), "--format", "hf", "--out", str(hf_dir)]) == 0
    assert main(["import", "--format", "hf", "--src", str(hf_dir), "--workdir", str(tmp_path / "reference")]) == 0
    expected = gptjax.load(tmp_path / "reference")
    workdir = tmp_path / "faulty" / "imported"
    argv = ["import", "--format", "hf", "--src", str(hf_dir), "--workdir", str(workdir)]

    def after_fault(fail_at: int, error: str) -> None:
        assert visible_below(tmp_path / "faulty") == set(), "nothing of a failed import is visible"
        assert main(argv) == 0
        capsys.readouterr()
        for a, b in zip(jax_leaves(gptjax.load(workdir).params), jax_leaves(expected.params)):
            np.testing.assert_array_equal(a, b)
        shutil.rmtree(workdir)

    assert sweep(argv, tmp_path / "faulty", capsys, monkeypatch, after_fault) >= 3


# ---- prepare -------------------------------------------------------------------------------------------------------

def test_prepare_resumes_after_a_failing_write(tmp_path, capsys, monkeypatch):
    from gptjax.data import store

    text = (REPO / "gptjax" / "data" / "bundled" / "tinyshakespeare.txt").read_text()[:40000]
    (tmp_path / "corpus.txt").write_text(text)
    common = ["--input", str(tmp_path / "corpus.txt"), "--txt-mode", "blank_lines", "--workers", "1", "--quiet",
              "--dedup", "exact"]
    reference = tmp_path / "reference"
    assert main(["prepare", *common, "--out", str(reference)]) == 0
    expected = store.manifest_identity(store.read_manifest(reference))
    out = tmp_path / "faulty" / "data"
    argv = ["prepare", *common, "--out", str(out), "--decisions", str(tmp_path / "faulty" / "decisions.jsonl")]

    def after_fault(fail_at: int, error: str) -> None:
        assert not out.exists(), "the output appears only when complete"
        assert main(argv) == 0  # resumes from the finished chunks
        capsys.readouterr()
        assert store.manifest_identity(store.read_manifest(out)) == expected
        shutil.rmtree(tmp_path / "faulty")

    assert sweep(argv, tmp_path / "faulty", capsys, monkeypatch, after_fault) >= 5


# ---- ablate --------------------------------------------------------------------------------------------------------

def test_ablate_report_is_whole_or_absent(cache_dir, tmp_path, capsys, monkeypatch):
    """The ablation's own writes (plan files, report.json, report.md, the plot) over finished runs; the runs' training
    is `gptjax train`'s, swept above."""
    from test_ablate import write_ablation_file

    ablation = write_ablation_file(tmp_path / "abl.py", cache_dir, {"ln": {}, "rms": {"model.norm": "rmsnorm"}},
                                   steps=4)
    root = tmp_path / "runs"
    argv = ["ablate", "--config", str(ablation), "--workdir", str(root), "--seeds", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    expected = json.loads((root / "report.json").read_text())
    reports = ("report.json", "report.md", "val_loss.png")

    def after_fault(fail_at: int, error: str) -> None:
        for name in reports:  # each report file is whole (the old one, or the new one), never cut short
            if (root / name).exists() and name == "report.json":
                assert json.loads((root / name).read_text()) == expected
        assert not [p for p in root.iterdir() if ".tmp-" in p.name], "no temporary file is left"
        assert main(argv) == 0
        capsys.readouterr()
        assert json.loads((root / "report.json").read_text()) == expected

    def remove_reports() -> None:
        for name in reports:
            (root / name).unlink(missing_ok=True)

    remove_reports()
    assert sweep(argv, root, capsys, monkeypatch, after_fault, undo_complete_run=remove_reports) >= 3
