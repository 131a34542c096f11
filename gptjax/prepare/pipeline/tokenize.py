"""Phase 4: tokenize every chunk's surviving documents (boilerplate removed) into per-split token parts."""
from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gptjax.config import DataConfig
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.prepare import stages
from gptjax.prepare.pipeline import chunk_files
from gptjax.prepare.pipeline.executor import Executor
from gptjax.prepare.pipeline.results import DedupResult, ResumeCounts, TokenizeResult
from gptjax.prepare.pipeline.survivors import char_cut_texts
from gptjax.prepare.report import StageStats
from gptjax.prepare.stages import Drop

FAULT_KILL_AFTER_PARTS = "GPTJAX_FAULT_KILL_AFTER_PARTS"  # tests: SIGKILL the run after this many parts
FAULT_KILL_WORKER_AT_PART = "GPTJAX_FAULT_KILL_WORKER_AT_PART"  # tests: SIGKILL the worker tokenizing this part


@functools.lru_cache(maxsize=2)
def _load_tokenizer(path: str, fingerprint: str) -> tokenizers.Tokenizer:
    """The tokenizer saved at `path`, loaded once per process (the fingerprint keys the cache)."""
    tok = tokenizers.load(path)
    if tokenizers.fingerprint(tok) != fingerprint:
        raise GptjaxError(f"the tokenizer in {path} changed during `gptjax prepare`; run it again")
    return tok


def tokenize_task(work_dir: str, chunk: int, chunk_start: int, keep: np.ndarray, fingerprint: str,
                  data: DataConfig, tokenizer_dir: str | None = None) -> dict:
    """Tokenizes one chunk's surviving documents into its part files; returns its done marker. The tokenizer is
    read from `tokenizer_dir` (default: the work directory's)."""
    if os.environ.get(FAULT_KILL_WORKER_AT_PART) == str(chunk):
        os.kill(os.getpid(), signal.SIGKILL)
    work = Path(work_dir)
    unit = data.prepare.boilerplate
    tok = _load_tokenizer(tokenizer_dir or str(work / "tokenizer"), fingerprint)
    reader = chunk_files.CleanChunkReader(work / "clean", chunk)
    names = chunk_files.read_chunk_sources(work / "clean", chunk)
    positions = np.flatnonzero(keep).tolist()
    texts = [reader.text(i) for i in positions]
    in_val = np.load(chunk_files.clean_paths(work / "clean", chunk)["val.npy"])[positions].tolist()
    drops: list[tuple[int, str, str]] = []  # (position in chunk, stage, reason)
    boilerplate = StageStats()
    if unit != "none":
        texts, kept = stages.strip_boilerplate(texts, [names.sources[i] for i in positions],
                                               chunk_files.frequent_units(work), unit, boilerplate)
        emptied = sorted(set(range(len(positions))) - set(kept))
        drops += [(positions[i], "boilerplate", "empty_after_boilerplate") for i in emptied]
        positions, in_val = [positions[i] for i in kept], [in_val[i] for i in kept]
    result = stages.tokenize_texts(tok, texts, in_val, [names.sources[i] for i in positions], StageStats())
    drops += [(positions[i], "tokenize", "no_tokens") for i in result.dropped_positions]
    if unit != "none":
        result.stats["boilerplate"] = boilerplate
    drops.sort()
    return chunk_files.write_token_part(
        work / "parts", chunk, result, fingerprint,
        [Drop(names.sources[p], names.doc_ids[p], stage, reason) for p, stage, reason in drops],
        [chunk_start + p for p, _, _ in drops])


def _char_cut_part(work: Path, starts: np.ndarray, keep: np.ndarray, fingerprint: str, data: DataConfig) -> None:
    """The one part of a character-cut split: all survivors joined, train and val by characters."""
    tok = _load_tokenizer(str(work / "tokenizer"), fingerprint)
    boilerplate = StageStats()
    emptied: list[int] = []
    train_text, val_text = char_cut_texts(work, starts, keep, data, boilerplate, emptied)
    result = stages.tokenize_texts(tok, [train_text, val_text], [False, True],
                                   ["train (character cut)", "val (character cut)"], StageStats())
    if data.prepare.boilerplate != "none":
        result.stats["boilerplate"] = boilerplate
    names = chunk_files.SourceNames(work / "clean", chunk_files.load_corpus_index(work / "clean", len(starts) - 1))
    drops = [Drop(names.source(doc), names.doc_id(doc), "boilerplate", "empty_after_boilerplate") for doc in emptied]
    chunk_files.write_token_part(work / "parts", 0, result, fingerprint, drops, emptied)


def _part_done(parts_dir: Path, part: int) -> bool:
    return chunk_files.read_done(chunk_files.part_paths(parts_dir, part)["done.json"]) is not None


def tokenize_phase(work: Path, starts: np.ndarray, keep: np.ndarray, dedup: DedupResult, fingerprint: str,
                   data: DataConfig, executor: Executor, show_progress: bool) -> TokenizeResult:
    """Tokenizes every chunk not done yet into `work/parts` (one part for a character-cut split)."""
    parts_dir = work / "parts"
    if dedup.char_cut:
        if _part_done(parts_dir, 0):
            return TokenizeResult(1, ResumeCounts(reused=1))
        _char_cut_part(work, starts, keep, fingerprint, data)
        return TokenizeResult(1, ResumeCounts(computed=1))

    kill_after = int(os.environ.get(FAULT_KILL_AFTER_PARTS, "-1"))
    n_chunks = len(starts) - 1
    finished = {chunk for chunk in range(n_chunks) if _part_done(parts_dir, chunk)}
    tasks: Iterator[tuple] = ((str(work), chunk, int(starts[chunk]), keep[starts[chunk]:starts[chunk + 1]],
                               fingerprint, data) for chunk in range(n_chunks) if chunk not in finished)
    computed = 0
    with tqdm(total=n_chunks, initial=len(finished), desc="tokenize", unit="chunk", disable=not show_progress,
              leave=False) as bar:
        for _ in executor.map(tokenize_task, tasks):
            computed += 1
            bar.update(1)
            if computed == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    return TokenizeResult(n_chunks, ResumeCounts(reused=len(finished), computed=computed))
