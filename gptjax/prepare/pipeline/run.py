"""The whole run: lock the output, open (or resume) the work directory, run the phases in order on one executor,
write the report and manifest, and move the finished output into place with one rename."""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gptjax import fileio
from gptjax.config import DataConfig
from gptjax.data import store
from gptjax.data import tokenizer as tokenizers
from gptjax.data.sources import cache_root
from gptjax.errors import GptjaxError
from gptjax.fileio import exclusive_lock, read_json, write_json_atomic
from gptjax.prepare import readers, settings
from gptjax.prepare.pipeline import chunk_files
from gptjax.prepare.pipeline.clean import n_clean_documents
from gptjax.prepare.pipeline.decisions import write_decisions
from gptjax.prepare.pipeline.executor import Executor, LocalExecutor
from gptjax.prepare.pipeline.results import DedupResult, ShardResult, TokenizerInfo
from gptjax.prepare.pipeline.runner import LocalRunner, PhaseRunner
from gptjax.prepare.pipeline.tokenizer import tokenizer_phase
from gptjax.prepare.report import (
    StageStats,
    drop_summary,
    merge_stage_maps,
    render_table,
    stages_from_json,
    stages_to_json,
)

FORMAT_VERSION = 2
REPORT = "report.json"


def work_dir_for(out_dir: Path) -> Path:
    """Where an unfinished prepare of `out_dir` keeps its finished chunks."""
    return out_dir.parent / f".{out_dir.name}.work"


def read_report(data_dir: str | Path) -> dict:
    """The stage report of a prepared directory."""
    return read_json(fileio.as_path(data_dir) / REPORT, "prepare report", "prepare the data again with gptjax prepare")


def _work_settings(files: list[Path], data: DataConfig, runner: str) -> dict:
    """What an unfinished work directory must have been started with to be reused: the format, the settings, each
    input's size and modification time, and the runner (the runners cut the corpus into different chunks)."""
    inputs = []
    for path in files:
        stat = path.stat()
        inputs.append([str(path), stat.st_size, stat.st_mtime_ns])
    return {"format_version": FORMAT_VERSION, "config": settings.settings_key(data), "inputs": inputs,
            "runner": runner}


def _open_work_dir(work: Path, work_settings: dict, show_progress: bool) -> None:
    """Reuses `work` when it was started with the same settings and inputs, else starts it afresh."""
    existing = chunk_files.read_done(work / "settings.json")
    if existing is not None and existing != work_settings:
        if show_progress:
            tqdm.write(f"gptjax prepare: settings, inputs or runner changed since the unfinished run in {work}; "
                       f"starting over")
        shutil.rmtree(work)
    elif existing is None and work.exists():
        shutil.rmtree(work)
    for sub in ("clean", "parts", "final"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    if existing != work_settings:
        write_json_atomic(work / "settings.json", work_settings)


def _check_new_output(out_dir: Path) -> None:
    if (out_dir / store.MANIFEST).exists():
        raise GptjaxError(f"{out_dir} already holds prepared data; choose another --out (nothing was changed)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise GptjaxError(f"{out_dir} exists and is not empty; choose a new --out directory (nothing was changed)")


def _same_output(out_dir: Path, files: list[Path], data: DataConfig) -> dict:
    """The manifest of `out_dir`, which another prepare finished while this one waited for it: reused only when it
    was made from the same inputs with the same settings."""
    manifest = store.read_manifest(out_dir)
    asked = {"inputs": [str(p) for p in files], "settings": settings.settings_key(data)}
    found = {"inputs": manifest.get("inputs"), "settings": manifest.get("settings")}
    if found != asked:
        differ = "inputs" if found["inputs"] != asked["inputs"] else "settings"
        raise GptjaxError(f"{out_dir} was prepared meanwhile by another `gptjax prepare` from other {differ}; "
                          f"choose another --out (nothing was changed)")
    return manifest


def _nothing_left(stage_stats: dict[str, StageStats], where: str) -> GptjaxError:
    """The one error for a corpus from which no document survives, naming the main reasons with examples."""
    read = stage_stats.get("read", StageStats())
    if read.docs_out == 0:
        return GptjaxError(f"no documents to prepare: every input file is empty, binary or unreadable, or holds no "
                           f"text records ({drop_summary(stage_stats)}); check --input and --text-field")
    return GptjaxError(f"no documents left after {where}: read {read.notes.get('files', 0)} files, "
                       f"{read.docs_out:,} documents; dropped: {drop_summary(stage_stats)}. Loosen the filters "
                       f"(--no-quality, --languages, --dedup none; --raw turns them all off) or check "
                       f"--input/--text-field")


def run_pipeline(inputs: str | Iterable[str], out_dir: str | Path, data: DataConfig, show_progress: bool = True,
                 decisions: str | Path | None = None, executor: Executor | None = None,
                 runner: PhaseRunner | None = None) -> dict:
    """Prepares `inputs` into the new directory `out_dir` and returns its manifest (resuming an interrupted run).

    `data` gives the tokenizer (`tokenizer`, `tokenizer_dir`, `vocab_size`), `val_fraction` and every stage
    setting (`prepare`); its `inputs` field is not read. `decisions`: also write the per-document decisions file
    there. `runner`: who runs the phases (default: this machine, per-chunk tasks on `executor`, by default a local
    pool of `data.prepare.workers` processes; gptjax.prepare.pipeline.beam.BeamRunner runs them on Apache Beam).
    """
    settings.check(data)
    if fileio.is_remote(out_dir):
        return _run_to_remote(inputs, str(out_dir).rstrip("/"), data, show_progress, decisions, executor, runner)
    out_dir = Path(out_dir).absolute()
    _check_new_output(out_dir)
    files = readers.resolve_inputs(_input_list(inputs))
    with exclusive_lock(out_dir.parent / f".{out_dir.name}.lock", f"the prepare of {out_dir}", wait=True):
        if (out_dir / store.MANIFEST).exists():  # a concurrent prepare finished it while this one waited
            return _same_output(out_dir, files, data)
        _check_new_output(out_dir)
        runner = runner or LocalRunner(executor or LocalExecutor(data.prepare.workers))
        try:
            return _run_locked(files, out_dir, data, runner, show_progress,
                               Path(decisions).absolute() if decisions else None)
        finally:
            runner.shutdown()


def _run_locked(files: list[Path], out_dir: Path, data: DataConfig, runner: PhaseRunner, show_progress: bool,
                decisions: Path | None) -> dict:
    started = time.perf_counter()
    work = work_dir_for(out_dir)
    _open_work_dir(work, _work_settings(files, data, runner.name), show_progress)
    wall: dict[str, float] = {}

    def timed(phase: str, run, *args):
        phase_start = time.perf_counter()
        result = run(*args)
        wall[phase] = time.perf_counter() - phase_start
        return result

    cleaned = timed("read+clean", runner.clean, files, work, data, show_progress)
    stage_stats = cleaned.stats
    if n_clean_documents(work, cleaned.n_chunks) == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise _nothing_left(stage_stats, "cleaning")
    deduped = timed("dedup", runner.dedup, work, cleaned.n_chunks, data, show_progress)
    stage_stats = merge_stage_maps([stage_stats, deduped.stats])
    keep = np.load(work / chunk_files.KEEP)
    index = chunk_files.load_corpus_index(work / "clean", cleaned.n_chunks)
    stage_stats["split"] = _split_stage(deduped, int(index.n_bytes[keep].sum()))
    tok = timed("tokenizer", tokenizer_phase, work, index.chunk_starts, keep, deduped, data, show_progress)
    tokenized = timed("tokenize", runner.tokenize, work, index.chunk_starts, keep, deduped, tok.fingerprint, data,
                      show_progress)
    part_done = [chunk_files.read_done(chunk_files.part_paths(work / "parts", p)["done.json"])
                 for p in range(tokenized.n_parts)]
    stage_stats = merge_stage_maps([stage_stats] + [stages_from_json(d["stats"]) for d in part_done])
    if sum(d["n_docs"]["train"] + d["n_docs"]["val"] for d in part_done) == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise _nothing_left(stage_stats, "tokenization")
    sharded = timed("shard", runner.shard, work, tokenized.n_parts, tok, data.prepare.shard_tokens, show_progress)
    stage_stats["shard"] = sharded.stats
    wall["total"] = time.perf_counter() - started

    final = work / "final"
    tokenizers.save(tokenizers.load(work / "tokenizer"), final / "tokenizer")
    report = {
        "stages": stages_to_json(stage_stats),
        "wall_seconds": {phase: round(seconds, 3) for phase, seconds in wall.items()},
        "tokenizer": tok.to_json(),
        "resume": {"clean_chunks": cleaned.counts.to_json(), "token_parts": tokenized.counts.to_json(),
                   "shards": sharded.counts.to_json()},
        "runner": runner.name,
        "workers": data.prepare.workers,
        "table": render_table(stage_stats, wall).splitlines(),
    }
    write_json_atomic(final / REPORT, report, sort_keys=False)
    manifest = _manifest(files, data, tok, sharded, stage_stats, wall["total"])
    write_json_atomic(final / store.MANIFEST, manifest)
    if data.prepare.tfds:
        from gptjax.prepare.tfds_builder import build_tfds

        shutil.rmtree(final / "tfds", ignore_errors=True)
        build_tfds(final, final / "tfds")
    if decisions is not None:
        write_decisions(decisions, work, cleaned.n_chunks, tokenized.n_parts)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        out_dir.rmdir()
    os.rename(final, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def _run_to_remote(inputs: str | Iterable[str], url: str, data: DataConfig, show_progress: bool,
                   decisions: str | Path | None, executor: Executor | None, runner: PhaseRunner | None) -> dict:
    """Prepares into a local staging directory (under the cache, so an interrupted run resumes), then uploads it to
    `url`: every file but the manifest, the manifest last, so the output counts as prepared only when complete."""
    fileio.check_remote_root(url, "--out")
    remote = fileio.as_path(url)
    if (remote / store.MANIFEST).exists():
        raise GptjaxError(f"{url} already holds prepared data; choose another --out (nothing was changed)")
    staging = cache_root(DataConfig()) / "prepare" / hashlib.sha256(url.encode()).hexdigest()[:16] / "out"
    manifest = None
    if (staging / store.MANIFEST).exists():  # prepared before, its upload interrupted: reuse unless stale
        try:
            manifest = _same_output(staging, readers.resolve_inputs(_input_list(inputs)), data)
        except GptjaxError:
            shutil.rmtree(staging)
    if manifest is None and remote.exists() and any(remote.iterdir()):
        raise GptjaxError(f"{url} exists and is not empty; choose a new --out (nothing was changed)")
    if manifest is None:
        manifest = run_pipeline(inputs, staging, data, show_progress, decisions, executor, runner)
    uploads = [path for path in sorted(staging.rglob("*")) if path.is_file() and path != staging / store.MANIFEST]
    for path in tqdm(uploads + [staging / store.MANIFEST], desc=f"upload to {url}", unit="file",
                     disable=not show_progress, leave=False):
        target = remote / str(path.relative_to(staging))
        with open(path, "rb") as source, target.open("wb") as destination:
            shutil.copyfileobj(source, destination, 16 << 20)
    shutil.rmtree(staging.parent, ignore_errors=True)
    return manifest


def _input_list(inputs: str | Iterable[str]) -> list:
    return [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)


def _manifest(files: list[Path], data: DataConfig, tok: TokenizerInfo, sharded: ShardResult,
              stage_stats: dict[str, StageStats], seconds: float) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": {"kind": tok.kind, "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size,
                      "eot_id": tok.eot_id},
        "splits": sharded.splits,
        "inputs": [str(p) for p in files],
        "settings": settings.settings_key(data),
        "report": REPORT,
        "stages": {name: {"docs_in": stats.docs_in, "docs_out": stats.docs_out, "tokens_out": stats.tokens_out,
                          "dropped": dict(stats.dropped)} for name, stats in stage_stats.items()},
        "seconds": round(seconds, 3),
    }


def _split_stage(deduped: DedupResult, n_bytes: int) -> StageStats:
    n_docs = deduped.n_train + deduped.n_val
    stats = StageStats(docs_in=n_docs, docs_out=n_docs, bytes_in=n_bytes, bytes_out=n_bytes)
    stats.notes["train_docs"] = deduped.n_train
    stats.notes["val_docs"] = deduped.n_val
    stats.notes["character_cut"] = int(deduped.char_cut)
    return stats
