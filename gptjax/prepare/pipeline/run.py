"""The whole run: lock the output, open (or resume) the work directory, run the phases in order on one executor,
write the report and manifest, and move the finished output into place with one rename."""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gptjax.config import DataConfig
from gptjax.data import store
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.fileio import exclusive_lock, read_json, write_json_atomic
from gptjax.prepare import readers, settings
from gptjax.prepare.pipeline import chunk_files
from gptjax.prepare.pipeline.clean import clean_phase, n_clean_documents
from gptjax.prepare.pipeline.corpus_dedup import dedup_phase
from gptjax.prepare.pipeline.decisions import write_decisions
from gptjax.prepare.pipeline.executor import Executor, LocalExecutor
from gptjax.prepare.pipeline.results import DedupResult, ShardResult, TokenizerInfo
from gptjax.prepare.pipeline.shards import shard_phase
from gptjax.prepare.pipeline.tokenize import tokenize_phase
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
    return read_json(Path(data_dir) / REPORT, "prepare report", "prepare the data again with gptjax prepare")


def _work_settings(files: list[Path], data: DataConfig) -> dict:
    inputs = []
    for path in files:
        stat = path.stat()
        inputs.append([str(path), stat.st_size, stat.st_mtime_ns])
    return {"format_version": FORMAT_VERSION, "config": settings.settings_key(data), "inputs": inputs}


def _open_work_dir(work: Path, work_settings: dict, show_progress: bool) -> None:
    """Reuses `work` when it was started with the same settings and inputs, else starts it afresh."""
    existing = chunk_files.read_done(work / "settings.json")
    if existing is not None and existing != work_settings:
        if show_progress:
            tqdm.write(f"gptjax prepare: settings or inputs changed since the unfinished run in {work}; starting over")
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
                 decisions: str | Path | None = None, executor: Executor | None = None) -> dict:
    """Prepares `inputs` into the new directory `out_dir` and returns its manifest (resuming an interrupted run).

    `data` gives the tokenizer (`tokenizer`, `tokenizer_dir`, `vocab_size`), `val_fraction` and every stage
    setting (`prepare`); its `inputs` field is not read. `decisions`: also write the per-document decisions file
    there. `executor`: where the per-chunk tasks run (default: a local pool of `data.prepare.workers` processes).
    """
    settings.check(data)
    out_dir = Path(out_dir).absolute()
    _check_new_output(out_dir)
    files = readers.resolve_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
    with exclusive_lock(out_dir.parent / f".{out_dir.name}.lock", f"the prepare of {out_dir}", wait=True):
        if (out_dir / store.MANIFEST).exists():  # a concurrent prepare finished it while this one waited
            return _same_output(out_dir, files, data)
        _check_new_output(out_dir)
        executor = executor or LocalExecutor(data.prepare.workers)
        try:
            return _run_locked(files, out_dir, data, executor, show_progress,
                               Path(decisions).absolute() if decisions else None)
        finally:
            executor.shutdown()


def _run_locked(files: list[Path], out_dir: Path, data: DataConfig, executor: Executor, show_progress: bool,
                decisions: Path | None) -> dict:
    started = time.perf_counter()
    work = work_dir_for(out_dir)
    _open_work_dir(work, _work_settings(files, data), show_progress)
    wall: dict[str, float] = {}

    def timed(phase: str, run, *args):
        phase_start = time.perf_counter()
        result = run(*args)
        wall[phase] = time.perf_counter() - phase_start
        return result

    cleaned = timed("read+clean", clean_phase, files, work, data, executor, show_progress)
    stage_stats = cleaned.stats
    if n_clean_documents(work, cleaned.n_chunks) == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise _nothing_left(stage_stats, "cleaning")
    deduped = timed("dedup", dedup_phase, work, cleaned.n_chunks, data, show_progress)
    stage_stats = merge_stage_maps([stage_stats, deduped.stats])
    keep = np.load(work / chunk_files.KEEP)
    index = chunk_files.load_corpus_index(work / "clean", cleaned.n_chunks)
    stage_stats["split"] = _split_stage(deduped, int(index.n_bytes[keep].sum()))
    tok = timed("tokenizer", tokenizer_phase, work, index.chunk_starts, keep, deduped, data, show_progress)
    tokenized = timed("tokenize", tokenize_phase, work, index.chunk_starts, keep, deduped, tok.fingerprint, data,
                      executor, show_progress)
    part_done = [chunk_files.read_done(chunk_files.part_paths(work / "parts", p)["done.json"])
                 for p in range(tokenized.n_parts)]
    stage_stats = merge_stage_maps([stage_stats] + [stages_from_json(d["stats"]) for d in part_done])
    if sum(d["n_docs"]["train"] + d["n_docs"]["val"] for d in part_done) == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise _nothing_left(stage_stats, "tokenization")
    sharded = timed("shard", shard_phase, work, tokenized.n_parts, tok, data.prepare.shard_tokens, show_progress)
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
