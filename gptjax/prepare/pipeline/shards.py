"""Phase 5: merge the token parts into the final shards (documents separated by `<|endoftext|>`) with their
document indexes, in corpus order, each shard at most `shard_tokens` tokens."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gptjax.data import store
from gptjax.errors import GptjaxError
from gptjax.prepare.pipeline import chunk_files
from gptjax.prepare.pipeline.executor import Executor, LocalExecutor
from gptjax.prepare.pipeline.results import ResumeCounts, ShardResult, TokenizerInfo
from gptjax.prepare.report import StageStats
from gptjax.prepare.stages import SPLITS

Piece = tuple[int, int, int]  # (part, first document, end document)


def plan_shards(lengths_per_part: list[np.ndarray], shard_tokens: int) -> list[list[Piece]]:
    """Shards as lists of (part, first doc, end doc): documents in order, one separator between documents, a
    shard closed before it would pass `shard_tokens` (a longer document gets a shard of its own)."""
    shards: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for part, lengths in enumerate(lengths_per_part):
        first = 0
        for doc, length in enumerate(lengths.tolist()):
            needed = length + (1 if size else 0)
            if size and size + needed > shard_tokens:
                if doc > first:
                    current.append((part, first, doc))
                shards.append(current)
                current, size, first = [], 0, doc
                needed = length
            size += needed
        if len(lengths) > first:
            current.append((part, first, len(lengths)))
    if current:
        shards.append(current)
    return shards


def _write_shard(path: Path, pieces: list[Piece], part_tokens: Callable[[int], np.ndarray],
                 part_lengths: dict[int, np.ndarray], eot: int, dtype: np.dtype, fingerprint: str) -> None:
    """Writes one shard (documents separated by `eot`) and its document index."""
    starts: list[np.ndarray] = []
    with store.TokenFileWriter(path, dtype, fingerprint) as writer:
        for part, first, end in pieces:
            lengths = part_lengths[part]
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            tokens = np.asarray(part_tokens(part)[offsets[first]:offsets[end]])
            piece_lengths = lengths[first:end]
            if writer.n_items:
                writer.append(np.array([eot], dtype))
            starts.append(writer.n_items + np.concatenate([[0], np.cumsum(piece_lengths + 1)[:-1]]))
            writer.append(np.insert(tokens, np.cumsum(piece_lengths)[:-1], eot))
    doc_starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    store.write_doc_index(store.index_path(path), doc_starts, fingerprint)


def _shard_complete(path: Path, n_docs: int) -> bool:
    try:
        store.read_header(path)
        return store.read_doc_index(store.index_path(path))[0].size == n_docs
    except GptjaxError:
        return False


def write_shard_task(work_dir: str, split: str, number: int, pieces: list[Piece], eot: int, dtype: str,
                     fingerprint: str) -> bool:
    """Writes shard `number` of `split` into `work/final` unless an earlier run finished it; True when written
    (runs in a worker: module level, pure over its arguments and the part files)."""
    parts_dir = Path(work_dir) / "parts"
    path = Path(work_dir) / "final" / f"{split}-{number:05d}.bin"
    if _shard_complete(path, sum(end - first for _, first, end in pieces)):
        return False
    lengths = {part: np.load(chunk_files.part_paths(parts_dir, part)[f"{split}.len.npy"]) for part, _, _ in pieces}
    _write_shard(path, pieces, lambda p: store.read_tokens(chunk_files.part_paths(parts_dir, p)[f"{split}.bin"]),
                 lengths, eot, np.dtype(dtype), fingerprint)
    return True


def shard_phase(work: Path, n_parts: int, tok: TokenizerInfo, shard_tokens: int, show_progress: bool,
                executor: Executor | None = None) -> ShardResult:
    """Merges the parts into `work/final` (finished shards of an earlier run are kept), writing the shards on
    `executor` (default: one after another in this process)."""
    final = work / "final"
    final.mkdir(exist_ok=True)
    parts_dir = work / "parts"
    executor = executor or LocalExecutor(1)
    dtype = store.token_dtype(tok.vocab_size)
    stats = StageStats()
    reused = computed = 0
    splits = {}
    started = time.perf_counter()
    for split in SPLITS:
        part_files = [chunk_files.part_paths(parts_dir, p) for p in range(n_parts)]
        lengths = [np.load(paths[f"{split}.len.npy"]) for paths in part_files]
        n_bytes = sum(chunk_files.read_done(paths["done.json"])["n_bytes"][split] for paths in part_files)
        plans = plan_shards(lengths, shard_tokens)
        tasks = [(str(work), split, number, pieces, tok.eot_id, dtype.name, tok.fingerprint)
                 for number, pieces in enumerate(plans)]
        for written in tqdm(executor.map(write_shard_task, tasks), total=len(tasks), desc=f"shards {split}",
                            unit="shard", disable=not show_progress, leave=False):
            computed += int(written)
            reused += int(not written)
        entries = []
        for number, pieces in enumerate(plans):
            path = final / f"{split}-{number:05d}.bin"
            entries.append({"file": path.name, "index": store.index_path(path).name,
                            "n_tokens": store.read_header(path).n_tokens,
                            "n_documents": sum(end - first for _, first, end in pieces)})
        n_docs_split = sum(e["n_documents"] for e in entries)
        splits[split] = {"shards": entries, "n_tokens": sum(e["n_tokens"] for e in entries), "n_bytes": n_bytes,
                         "n_documents": n_docs_split}
        stats.docs_in += n_docs_split
        stats.docs_out += n_docs_split
        stats.bytes_in += n_bytes
        stats.bytes_out += n_bytes
        stats.tokens_out += splits[split]["n_tokens"]
        stats.notes[f"{split}_shards"] = len(entries)
    stats.seconds = time.perf_counter() - started
    return ShardResult(splits, stats, ResumeCounts(reused, computed))
