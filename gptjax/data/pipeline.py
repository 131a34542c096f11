"""`gptjax prepare`: files -> read -> normalize -> language -> quality -> dedup -> boilerplate -> split ->
tokenizer -> tokenize -> shards, resumable, with a report.

Every stage is a pure function over a chunk of documents (gptjax.data.stages) or over per-document keys
(gptjax.data.corpus_dedup); this module only moves their inputs and outputs through a work directory beside the
output (`.<out>.work/`), running chunks on a process pool. Each chunk result is written atomically with a done
marker last, so a killed run (the process or one worker) resumes from the finished chunks when run again with the
same settings and inputs. The output directory appears, by one rename, only when it is complete: token shards
with document indexes, the tokenizer, `report.json` and `manifest.json` (plus a TFDS array_record copy with
`--tfds`).

Memory stays bounded by the chunk size and a few arrays of fixed size per document (keys, band hashes, lengths),
never by the corpus's bytes.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import json
import math
import multiprocessing
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gptjax.data import corpus_dedup, dedup, readers, stages, store
from gptjax.data import tokenizer as tokenizers
from gptjax.data.documents import Document
from gptjax.data.report import StageStats, drop_summary, merge_stage_maps, render_table, stages_from_json, stages_to_json
from gptjax.data.stages import SPLITS, PipelineConfig
from gptjax.errors import GptjaxError

FORMAT_VERSION = 2
REPORT = "report.json"
FAULT_KILL_AFTER_PARTS = "GPTJAX_FAULT_KILL_AFTER_PARTS"
FAULT_KILL_WORKER_AT_PART = "GPTJAX_FAULT_KILL_WORKER_AT_PART"
_BOILERPLATE_PARTITION_KEYS = 1 << 22
_SHINGLE_CACHE_DOCS = 4096
_READ_REPAIR_REASONS = ("files", "documents", "invalid_utf8_bytes", "invalid_utf8_records", "lone_surrogates")


class WorkerDied(GptjaxError):
    """A worker process of the pipeline died (killed, out of memory); finished chunks are kept for a rerun."""


class LocalExecutor:
    """Runs tasks in this process (workers <= 1) or on a pool of `workers` spawned processes.

    `map` yields results in submission order and keeps at most two tasks per worker in flight, so the
    arguments of only a few chunks are ever held at once.
    """

    def __init__(self, workers: int):
        self.workers = max(int(workers), 1)
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable, arguments: Iterable[tuple]) -> Iterator:
        if self.workers == 1:
            for args in arguments:
                yield fn(*args)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_die_with_parent, initargs=(os.getpid(),))
        pending: deque = deque()
        try:
            for args in arguments:
                pending.append(self._pool.submit(fn, *args))
                while len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            self.shutdown()
            raise WorkerDied("a worker process of `gptjax prepare` died (killed or out of memory); the finished "
                             "chunks are kept: run the same command again to resume") from None

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# ---- worker tasks (module level: they run in spawned processes) ---------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Asks Linux to SIGKILL this worker when the prepare process dies, so no orphan keeps writing chunks (and
    exits at once if the parent died while this worker was starting)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _clean_task(clean_dir: str, chunk: int, documents: list[Document], config: PipelineConfig) -> dict:
    """Cleans one chunk and writes its files; returns its done marker."""
    result = stages.clean_chunk(documents, config)
    stages.write_clean_chunk(Path(clean_dir), chunk, result)
    return stages.read_done(stages.clean_paths(Path(clean_dir), chunk)["done.json"])


@functools.lru_cache(maxsize=2)
def _load_tokenizer(path: str, fingerprint: str) -> tokenizers.Tokenizer:
    """The tokenizer saved at `path`, loaded once per process (the fingerprint keys the cache)."""
    tok = tokenizers.load(path)
    if tokenizers.fingerprint(tok) != fingerprint:
        raise GptjaxError(f"the tokenizer in {path} changed during `gptjax prepare`; run it again")
    return tok


def _frequent_units(path: Path) -> frozenset:
    """The boilerplate keys saved at `path`, loaded once per process and file version."""
    stat = path.stat()
    return _load_frequent_units(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_frequent_units(path: str, size: int, mtime_ns: int) -> frozenset:
    return frozenset(int(key) for key in np.load(path))


def _strip_boilerplate(texts: list[str], sources: list[str], frequent: frozenset, unit: str,
                       stats: StageStats) -> tuple[list[str], list[int]]:
    """Texts without their boilerplate units and the positions of those still holding text."""
    started = time.perf_counter()
    kept_texts, kept_positions = [], []
    for position, (text, source) in enumerate(zip(texts, sources)):
        size = len(text.encode("utf-8", "surrogatepass"))
        stats.docs_in += 1
        stats.bytes_in += size
        stripped, removed = stages.remove_boilerplate_units(text, frequent, unit)
        stats.notes[f"{unit}s_removed"] += removed
        if not stripped.strip():
            stats.drop("empty_after_boilerplate", source)
            continue
        stats.docs_out += 1
        stats.bytes_out += len(stripped.encode("utf-8", "surrogatepass"))
        kept_texts.append(stripped)
        kept_positions.append(position)
    stats.seconds += time.perf_counter() - started
    return kept_texts, kept_positions


def _tokenize_task(work_dir: str, chunk: int, keep: np.ndarray, fingerprint: str, config: PipelineConfig) -> dict:
    """Tokenizes one chunk's surviving documents into its part files; returns its done marker."""
    if os.environ.get(FAULT_KILL_WORKER_AT_PART) == str(chunk):
        os.kill(os.getpid(), signal.SIGKILL)
    work = Path(work_dir)
    tok = _load_tokenizer(str(work / "tokenizer"), fingerprint)
    reader = stages.CleanChunkReader(work / "clean", chunk)
    positions = np.flatnonzero(keep)
    texts = [reader.text(int(i)) for i in positions]
    names = json.loads(stages.clean_paths(work / "clean", chunk)["sources.json"].read_text())["sources"]
    sources = [names[int(i)] for i in positions]
    in_val = np.load(stages.clean_paths(work / "clean", chunk)["val.npy"])[positions].tolist()
    boilerplate = StageStats()
    if config.boilerplate != "none":
        frequent = _frequent_units(work / "boilerplate.npy")
        texts, kept = _strip_boilerplate(texts, sources, frequent, config.boilerplate, boilerplate)
        sources = [sources[i] for i in kept]
        in_val = [in_val[i] for i in kept]
    result = stages.tokenize_texts(tok, texts, in_val, sources, StageStats())
    if config.boilerplate != "none":
        result.stats["boilerplate"] = boilerplate
    return stages.write_token_part(work / "parts", chunk, result, fingerprint)


# ---- phases ---------------------------------------------------------------------------------------------------


def _chunks(documents: Iterable[Document], chunk_bytes: int, stats: StageStats) -> Iterator[list[Document]]:
    """Consecutive runs of documents of about `chunk_bytes` of text each; counts what the reader let through."""
    chunk: list[Document] = []
    size = 0
    started = time.perf_counter()
    for document in documents:
        n_bytes = len(document.text.encode("utf-8", "surrogatepass"))
        stats.docs_out += 1
        stats.bytes_out += n_bytes
        chunk.append(document)
        size += n_bytes
        if size >= chunk_bytes:
            stats.seconds += time.perf_counter() - started
            yield chunk
            chunk, size = [], 0
            started = time.perf_counter()
    stats.seconds += time.perf_counter() - started
    if chunk:
        yield chunk


def _read_stage(read_stats: readers.ReadStats, chunk_stats: StageStats, files: list[Path]) -> StageStats:
    """The read stage's report entry: documents out, records and files dropped by reason, repairs as notes."""
    stats = StageStats(docs_out=chunk_stats.docs_out, bytes_out=chunk_stats.bytes_out, seconds=chunk_stats.seconds)
    stats.bytes_in = sum(path.stat().st_size for path in files)
    for reason, count in read_stats.counts.items():
        if reason in _READ_REPAIR_REASONS:
            stats.notes[reason] += count
        else:
            stats.drop(reason, count=count)
            stats.examples[reason] = list(read_stats.examples.get(reason, []))
    file_level = ("binary_file", "empty_file", "unsupported_file", "corrupt_file", "missing_text_column")
    stats.docs_in = stats.docs_out + sum(c for r, c in stats.dropped.items() if r not in file_level)
    return stats


def _clean_phase(files: list[Path], work: Path, config: PipelineConfig, executor: LocalExecutor,
                 show_progress: bool) -> tuple[int, dict[str, StageStats], dict]:
    """Reads all inputs and cleans every chunk not done yet; returns (#chunks, stage stats, resume counters)."""
    clean_dir = work / "clean"
    read_stats = readers.ReadStats()
    reader_config = readers.ReaderConfig(txt_mode=config.txt_mode, text_field=config.text_field,
                                         text_column=config.text_field, max_record_bytes=config.max_doc_bytes)
    chunk_stats = StageStats()
    documents = readers.read_documents(files, reader_config, read_stats)
    counters = {"reused": 0, "computed": 0}
    n_chunks = 0
    bar = tqdm(desc="read+clean", unit="chunk", disable=not show_progress, leave=False)

    def pending_tasks() -> Iterator[tuple]:
        nonlocal n_chunks
        for index, chunk in enumerate(_chunks(documents, config.chunk_bytes, chunk_stats)):
            n_chunks = index + 1
            if stages.read_done(stages.clean_paths(clean_dir, index)["done.json"]) is not None:
                counters["reused"] += 1
                bar.update(1)
                continue
            yield str(clean_dir), index, chunk, config

    for _ in executor.map(_clean_task, pending_tasks()):
        counters["computed"] += 1
        bar.update(1)
    bar.close()
    done = [stages.read_done(stages.clean_paths(clean_dir, i)["done.json"]) for i in range(n_chunks)]
    stage_stats = merge_stage_maps([stages_from_json(d["stats"]) for d in done])
    stage_stats["read"] = _read_stage(read_stats, chunk_stats, files)
    return n_chunks, stage_stats, counters


@dataclasses.dataclass
class CorpusIndex:
    """Per-document arrays over all cleaned chunks, in corpus order."""

    chunk_starts: np.ndarray  # int64 [n_chunks + 1]: first global document of each chunk
    exact_keys: np.ndarray  # uint64 [n, 2]
    in_val: np.ndarray  # bool [n]
    n_bytes: np.ndarray  # int64 [n]

    @property
    def n_docs(self) -> int:
        return int(self.chunk_starts[-1])

    def locate(self, doc: int) -> tuple[int, int]:
        chunk = int(np.searchsorted(self.chunk_starts, doc, side="right")) - 1
        return chunk, doc - int(self.chunk_starts[chunk])


def _load_corpus_index(clean_dir: Path, n_chunks: int) -> CorpusIndex:
    counts, keys, in_val, sizes = [], [], [], []
    for chunk in range(n_chunks):
        paths = stages.clean_paths(clean_dir, chunk)
        offsets = np.load(paths["offsets.npy"])
        counts.append(len(offsets) - 1)
        sizes.append(np.diff(offsets))
        keys.append(np.load(paths["exact.npy"]))
        in_val.append(np.load(paths["val.npy"]))
    return CorpusIndex(
        chunk_starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        exact_keys=np.concatenate(keys) if keys else np.zeros((0, 2), np.uint64),
        in_val=np.concatenate(in_val) if in_val else np.zeros(0, bool),
        n_bytes=np.concatenate(sizes).astype(np.int64) if sizes else np.zeros(0, np.int64))


class _SourceNames:
    """Source names of documents by global index (loaded per chunk, on demand)."""

    def __init__(self, clean_dir: Path, index: CorpusIndex):
        self.clean_dir = clean_dir
        self.index = index
        self._loaded: dict[int, list[str]] = {}

    def _chunk(self, chunk: int) -> list[str]:
        if chunk not in self._loaded:
            path = stages.clean_paths(self.clean_dir, chunk)["sources.json"]
            self._loaded = {chunk: json.loads(path.read_text())["sources"]}
        return self._loaded[chunk]

    def __call__(self, doc: int) -> str:
        chunk, local = self.index.locate(doc)
        return self._chunk(chunk)[local]


def _drop_examples(stats: StageStats, reason: str, dropped: np.ndarray, kept_as: np.ndarray,
                   name_of: Callable[[int], str]) -> None:
    if dropped.size == 0:
        return
    stats.drop(reason, count=int(dropped.size))
    stats.examples[reason] = [f"{name_of(int(d))} (duplicate of {name_of(int(kept_as[d]))})" for d in dropped[:3]]


def _cluster_notes(stats: StageStats, roots: np.ndarray, alive_before: np.ndarray) -> None:
    sizes = np.bincount(roots[alive_before], minlength=len(roots)) if alive_before.any() else np.zeros(0, np.int64)
    stats.notes["clusters"] = int((sizes > 1).sum())
    stats.notes["largest_cluster"] = int(sizes.max()) if sizes.size else 0


def _exact_stage(index: CorpusIndex, alive: np.ndarray, names: _SourceNames) -> tuple[np.ndarray, StageStats]:
    """Keeps the first document of every exact key; returns the new alive mask and the stage's report entry."""
    started = time.perf_counter()
    keep = corpus_dedup.first_occurrences(index.exact_keys, alive)
    alive_index = np.flatnonzero(alive)
    roots = np.arange(index.n_docs, dtype=np.int64)
    if alive_index.size:
        keys = np.ascontiguousarray(index.exact_keys[alive_index]).view(np.dtype((np.void, 16))).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        roots[alive_index] = alive_index[first[inverse.ravel()]]
    stats = StageStats(docs_in=int(alive.sum()), bytes_in=int(index.n_bytes[alive].sum()),
                       docs_out=int(keep.sum()), bytes_out=int(index.n_bytes[keep].sum()))
    _drop_examples(stats, "exact_duplicate", np.flatnonzero(alive & ~keep), roots, names)
    _cluster_notes(stats, roots, alive)
    stats.seconds = time.perf_counter() - started
    return keep, stats


def _near_stage(index: CorpusIndex, alive: np.ndarray, clean_dir: Path, n_chunks: int, config: PipelineConfig,
                names: _SourceNames, show_progress: bool) -> tuple[np.ndarray, StageStats]:
    """Keeps the first document of every near-duplicate cluster; returns the new alive mask and the report entry."""
    started = time.perf_counter()
    minhash = config.minhash()
    chunk_readers: dict[int, stages.CleanChunkReader] = {}

    @functools.lru_cache(maxsize=_SHINGLE_CACHE_DOCS)
    def shingles(doc: int) -> np.ndarray:
        chunk, local = index.locate(doc)
        if chunk not in chunk_readers:
            chunk_readers[chunk] = stages.CleanChunkReader(clean_dir, chunk)
        return dedup.shingle_hashes(chunk_readers[chunk].text(local), minhash.ngram)

    def similar(first: int, second: int) -> bool:
        return dedup.jaccard(shingles(first), shingles(second)) >= minhash.threshold

    def band_columns() -> Iterator[np.ndarray]:
        for band in tqdm(range(minhash.bands), desc="near dedup", unit="band", disable=not show_progress, leave=False):
            columns = [np.load(stages.clean_paths(clean_dir, c)["bands.npy"], mmap_mode="r")[band] for c in range(n_chunks)]
            yield np.concatenate(columns) if columns else np.zeros(0, np.uint64)

    roots, counters = corpus_dedup.near_duplicate_roots(index.n_docs, band_columns(), alive, similar)
    keep = alive & (roots == np.arange(index.n_docs))
    stats = StageStats(docs_in=int(alive.sum()), bytes_in=int(index.n_bytes[alive].sum()),
                       docs_out=int(keep.sum()), bytes_out=int(index.n_bytes[keep].sum()))
    _drop_examples(stats, "near_duplicate", np.flatnonzero(alive & ~keep), roots, names)
    _cluster_notes(stats, roots, alive)
    stats.notes.update(counters)
    stats.seconds = time.perf_counter() - started
    return keep, stats


def frequent_unit_keys(clean_dir: Path, index: CorpusIndex, alive: np.ndarray, max_count: int) -> np.ndarray:
    """Sorted keys of the lines/paragraphs seen more than `max_count` times in the surviving documents.

    Counted in hash partitions of about 4M keys each, so memory stays bounded whatever the corpus size.
    """
    per_chunk = []
    total = 0
    for chunk in range(len(index.chunk_starts) - 1):
        paths = stages.clean_paths(clean_dir, chunk)
        alive_chunk = alive[index.chunk_starts[chunk]:index.chunk_starts[chunk + 1]]
        mask = np.repeat(alive_chunk, np.load(paths["unit_counts.npy"]))
        per_chunk.append((paths["units.npy"], mask))
        total += int(mask.sum())
    n_partitions = max(1, math.ceil(total / _BOILERPLATE_PARTITION_KEYS))
    frequent = []
    for partition in range(n_partitions):
        keys = []
        for path, mask in per_chunk:
            chunk_keys = np.load(path)[mask]
            keys.append(chunk_keys[chunk_keys % np.uint64(n_partitions) == partition])
        if keys:
            values, counts = np.unique(np.concatenate(keys), return_counts=True)
            frequent.append(values[counts > max_count])
    return np.sort(np.concatenate(frequent)) if frequent else np.zeros(0, np.uint64)


def _dedup_phase(work: Path, n_chunks: int, config: PipelineConfig, show_progress: bool) -> dict:
    """Corpus-wide exact/near dedup, boilerplate counting and the split decision; cached in `dedup.json`."""
    marker = work / "dedup.json"
    cached = stages.read_done(marker)
    if cached is not None:
        return cached
    clean_dir = work / "clean"
    index = _load_corpus_index(clean_dir, n_chunks)
    names = _SourceNames(clean_dir, index)
    alive = np.ones(index.n_docs, dtype=bool)
    stage_stats: dict[str, StageStats] = {}
    if config.dedup in ("exact", "near"):
        alive, stage_stats["dedup_exact"] = _exact_stage(index, alive, names)
    if config.dedup == "near":
        alive, stage_stats["dedup_near"] = _near_stage(index, alive, clean_dir, n_chunks, config, names, show_progress)
    if config.boilerplate != "none":
        started = time.perf_counter()
        frequent = frequent_unit_keys(clean_dir, index, alive, config.boilerplate_max_count)
        stages.save_npy_atomic(work / "boilerplate.npy", frequent)
        stage_stats["boilerplate"] = StageStats(seconds=time.perf_counter() - started)
        stage_stats["boilerplate"].notes["frequent_units"] = int(frequent.size)
    n_val = int((alive & index.in_val).sum())
    n_train = int(alive.sum()) - n_val
    char_cut = config.val_fraction > 0 and (n_train == 0 or n_val == 0)
    stages.save_npy_atomic(work / "keep.npy", alive)
    result = {"stats": stages_to_json(stage_stats), "n_train": n_train, "n_val": n_val, "char_cut": bool(char_cut)}
    store.write_json_atomic(marker, result)
    return result


def _surviving_texts(work: Path, starts: np.ndarray, keep: np.ndarray, config: PipelineConfig, stats: StageStats,
                     only: Callable[[str, bool], bool] | None = None, byte_budget: int | None = None) -> list[str]:
    """Texts of the surviving documents in corpus order (boilerplate removed), optionally selected and capped."""
    frequent = _frequent_units(work / "boilerplate.npy") if config.boilerplate != "none" else frozenset()
    texts: list[str] = []
    total = 0
    for chunk in range(len(starts) - 1):
        paths = stages.clean_paths(work / "clean", chunk)
        reader = stages.CleanChunkReader(work / "clean", chunk)
        meta = json.loads(paths["sources.json"].read_text())
        in_val = np.load(paths["val.npy"])
        for local in np.flatnonzero(keep[starts[chunk]:starts[chunk + 1]]):
            if only is not None and not only(meta["doc_ids"][local], bool(in_val[local])):
                continue
            text = reader.text(int(local))
            if config.boilerplate != "none":
                kept, _ = _strip_boilerplate([text], [meta["sources"][local]], frequent, config.boilerplate, stats)
                if not kept:
                    continue
                text = kept[0]
            texts.append(text)
            total += len(text.encode("utf-8", "surrogatepass"))
            if byte_budget is not None and total >= byte_budget:
                return texts
    return texts


def _char_cut_texts(work: Path, starts: np.ndarray, keep: np.ndarray, config: PipelineConfig,
                    stats: StageStats) -> tuple[str, str]:
    """nanoGPT's split for corpora too small for a hash split: all documents joined, cut 90/10 by characters."""
    joined = "\n\n".join(_surviving_texts(work, starts, keep, config, stats))
    cut = int(len(joined) * (1.0 - config.val_fraction))
    return joined[:cut], joined[cut:]


def _tokenizer_phase(work: Path, starts: np.ndarray, keep: np.ndarray, dedup_result: dict, config: PipelineConfig,
                     show_progress: bool) -> dict:
    """Builds (or reuses) the tokenizer in `work/tokenizer`; returns what the report says about it."""
    tok_dir = work / "tokenizer"
    info_path = work / "tokenizer.json"
    cached = stages.read_done(info_path)
    if cached is not None and (tok_dir / tokenizers.SPEC_FILE).is_file():
        return cached
    started = time.perf_counter()
    sample_docs = sample_bytes = 0
    if config.tokenizer_dir and (Path(config.tokenizer_dir) / tokenizers.SPEC_FILE).is_file():
        tok = tokenizers.load(config.tokenizer_dir)
        if tok.kind != config.tokenizer:
            raise GptjaxError(f"--tokenizer-dir {config.tokenizer_dir} holds a {tok.kind} tokenizer, not "
                              f"{config.tokenizer}; pass --tokenizer {tok.kind}")
    elif config.tokenizer == "gpt2_bpe":
        tok = tokenizers.Gpt2BpeAdapter.from_dir(config.tokenizer_dir)
    elif config.tokenizer == "char":
        chars = set()
        for chunk in range(len(starts) - 1):
            chars.update(stages.read_done(stages.clean_paths(work / "clean", chunk)["done.json"])["chars"])
        if dedup_result["char_cut"]:
            chars.add("\n")
        tok = tokenizers.CharTokenizer("".join(sorted(chars)))
    else:
        scratch = StageStats()
        if dedup_result["char_cut"]:
            texts = [_char_cut_texts(work, starts, keep, config, scratch)[0][: config.sample_bytes]]
        else:
            fraction = min(1.0, config.sample_docs / max(dedup_result["n_train"], 1))
            texts = _surviving_texts(work, starts, keep, config, scratch, byte_budget=config.sample_bytes,
                                     only=lambda doc_id, val: not val and stages.unit_fraction(doc_id) < fraction)
        sample_docs, sample_bytes = len(texts), sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        if show_progress:
            tqdm.write(f"training sentencepiece ({config.model_type}, vocab {config.vocab_size}) on "
                       f"{sample_docs:,} documents, {sample_bytes / 1e6:.1f} MB")
        tok = tokenizers.train_tokenizer("sentencepiece", texts, config.vocab_size, config.model_type,
                                         config.byte_fallback)
        del texts
    scratch_dir = work / ".tokenizer.tmp"
    shutil.rmtree(scratch_dir, ignore_errors=True)
    tokenizers.save(tok, scratch_dir)
    shutil.rmtree(tok_dir, ignore_errors=True)
    os.rename(scratch_dir, tok_dir)
    info = {"kind": tok.kind, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
            "fingerprint": tokenizers.fingerprint(tok), "sample_docs": sample_docs, "sample_bytes": sample_bytes,
            "seconds": round(time.perf_counter() - started, 3)}
    if config.tokenizer == "sentencepiece":
        info.update(model_type=config.model_type, byte_fallback=config.byte_fallback)
    store.write_json_atomic(info_path, info)
    return info


def _kill_after_parts() -> int:
    return int(os.environ.get(FAULT_KILL_AFTER_PARTS, "-1"))


def _tokenize_phase(work: Path, starts: np.ndarray, keep: np.ndarray, dedup_result: dict, fingerprint: str,
                    config: PipelineConfig, executor: LocalExecutor, show_progress: bool) -> tuple[int, dict]:
    """Tokenizes every chunk not done yet into `work/parts`; returns (#parts, resume counters)."""
    parts_dir = work / "parts"
    counters = {"reused": 0, "computed": 0}
    if dedup_result["char_cut"]:
        if stages.read_done(stages.part_paths(parts_dir, 0)["done.json"]) is None:
            tok = _load_tokenizer(str(work / "tokenizer"), fingerprint)
            boilerplate = StageStats()
            train_text, val_text = _char_cut_texts(work, starts, keep, config, boilerplate)
            result = stages.tokenize_texts(tok, [train_text, val_text], [False, True],
                                           ["train (character cut)", "val (character cut)"], StageStats())
            if config.boilerplate != "none":
                result.stats["boilerplate"] = boilerplate
            stages.write_token_part(parts_dir, 0, result, fingerprint)
            counters["computed"] += 1
        else:
            counters["reused"] += 1
        return 1, counters

    kill_after = _kill_after_parts()
    n_chunks = len(starts) - 1

    def pending_tasks() -> Iterator[tuple]:
        for chunk in range(n_chunks):
            if stages.read_done(stages.part_paths(parts_dir, chunk)["done.json"]) is not None:
                counters["reused"] += 1
                continue
            chunk_keep = keep[starts[chunk]:starts[chunk + 1]]
            yield str(work), chunk, chunk_keep, fingerprint, config

    with tqdm(total=n_chunks, desc="tokenize", unit="chunk", disable=not show_progress, leave=False) as bar:
        bar.update(sum(stages.read_done(stages.part_paths(parts_dir, c)["done.json"]) is not None for c in range(n_chunks)))
        for _ in executor.map(_tokenize_task, pending_tasks()):
            counters["computed"] += 1
            bar.update(1)
            if counters["computed"] == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    return n_chunks, counters


def plan_shards(lengths_per_part: list[np.ndarray], shard_tokens: int) -> list[list[tuple[int, int, int]]]:
    """Shards as lists of (part, first doc, end doc): documents in order, one separator between documents, a
    shard closed before it would pass `shard_tokens` (a longer document gets a shard of its own)."""
    shards: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
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


def _write_shard(path: Path, pieces: list[tuple[int, int, int]], part_tokens: Callable[[int], np.ndarray],
                 part_lengths: list[np.ndarray], eot: int, dtype: np.dtype, fingerprint: str) -> tuple[int, int]:
    """Writes one shard (documents separated by `eot`) and its document index; returns (#tokens, #documents)."""
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
        n_tokens = writer.n_items
    doc_starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    store.write_doc_index(store.index_path(path), doc_starts, fingerprint)
    return n_tokens, int(doc_starts.size)


def _shard_complete(path: Path, n_docs: int) -> bool:
    try:
        store.read_header(path)
        return store.read_doc_index(store.index_path(path))[0].size == n_docs
    except GptjaxError:
        return False


def _shard_phase(work: Path, n_parts: int, tok_info: dict, shard_tokens: int,
                 show_progress: bool) -> tuple[dict, StageStats, dict]:
    """Merges the parts into final shards of at most `shard_tokens` tokens; returns manifest splits, stats, counters."""
    final = work / "final"
    final.mkdir(exist_ok=True)
    parts_dir = work / "parts"
    dtype = store.token_dtype(tok_info["vocab_size"])
    stats = StageStats()
    counters = {"reused": 0, "computed": 0}
    splits = {}
    started = time.perf_counter()
    for split in SPLITS:
        lengths = [np.load(stages.part_paths(parts_dir, p)[f"{split}.len.npy"]) for p in range(n_parts)]
        n_bytes = sum(stages.read_done(stages.part_paths(parts_dir, p)["done.json"])["n_bytes"][split]
                      for p in range(n_parts))
        plan = plan_shards(lengths, shard_tokens)
        entries = []
        for number, pieces in enumerate(tqdm(plan, desc=f"shards {split}", unit="shard", disable=not show_progress,
                                             leave=False)):
            path = final / f"{split}-{number:05d}.bin"
            n_docs = sum(end - first for _, first, end in pieces)
            if _shard_complete(path, n_docs):
                counters["reused"] += 1
            else:
                _write_shard(path, pieces, lambda p: store.read_tokens(stages.part_paths(parts_dir, p)[f"{split}.bin"]),
                             lengths, tok_info["eot_id"], dtype, tok_info["fingerprint"])
                counters["computed"] += 1
            n_tokens = store.read_header(path).n_tokens
            entries.append({"file": path.name, "index": store.index_path(path).name, "n_tokens": n_tokens,
                            "n_documents": n_docs})
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
    return splits, stats, counters


def _split_stage(dedup_result: dict, index_n_bytes: int) -> StageStats:
    n_docs = dedup_result["n_train"] + dedup_result["n_val"]
    stats = StageStats(docs_in=n_docs, docs_out=n_docs, bytes_in=index_n_bytes, bytes_out=index_n_bytes)
    stats.notes["train_docs"] = dedup_result["n_train"]
    stats.notes["val_docs"] = dedup_result["n_val"]
    stats.notes["character_cut"] = int(dedup_result["char_cut"])
    return stats


# ---- the whole run --------------------------------------------------------------------------------------------


def work_dir_for(out_dir: Path) -> Path:
    """Where an unfinished prepare of `out_dir` keeps its finished chunks."""
    return out_dir.parent / f".{out_dir.name}.work"


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Holds an exclusive lock on `lock_path`, so two prepares of one output never share a work directory.

    The lock file is removed on release; a waiter that then holds a lock on the removed file retries on a new one.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock_path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            current = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _settings(files: list[Path], config: PipelineConfig) -> dict:
    inputs = []
    for path in files:
        stat = path.stat()
        inputs.append([str(path), stat.st_size, stat.st_mtime_ns])
    return {"format_version": FORMAT_VERSION, "config": config.settings_key(), "inputs": inputs}


def _open_work_dir(work: Path, settings: dict, show_progress: bool) -> None:
    """Reuses `work` when it was started with the same settings and inputs, else starts it afresh."""
    existing = stages.read_done(work / "settings.json")
    if existing is not None and existing != settings:
        if show_progress:
            tqdm.write(f"gptjax prepare: settings or inputs changed since the unfinished run in {work}; starting over")
        shutil.rmtree(work)
    elif existing is None and work.exists():
        shutil.rmtree(work)
    for sub in ("clean", "parts", "final"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    if existing != settings:
        store.write_json_atomic(work / "settings.json", settings)


def _check_new_output(out_dir: Path) -> None:
    if (out_dir / store.MANIFEST).exists():
        raise GptjaxError(f"{out_dir} already holds prepared data; choose another --out (nothing was changed)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise GptjaxError(f"{out_dir} exists and is not empty; choose a new --out directory (nothing was changed)")


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


def run_pipeline(inputs: str | Iterable[str], out_dir: str | Path, config: PipelineConfig,
                 show_progress: bool = True) -> dict:
    """Prepares `inputs` into the new directory `out_dir` and returns its manifest (resuming an interrupted run)."""
    out_dir = Path(out_dir).absolute()
    _check_new_output(out_dir)
    files = readers.resolve_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
    work = work_dir_for(out_dir)
    lock = out_dir.parent / f".{out_dir.name}.lock"
    with _exclusive(lock):
        if (out_dir / store.MANIFEST).exists():
            return store.read_manifest(out_dir)
        _check_new_output(out_dir)
        return _run_locked(files, out_dir, work, config, show_progress)


def _run_locked(files: list[Path], out_dir: Path, work: Path, config: PipelineConfig, show_progress: bool) -> dict:
    started = time.perf_counter()
    settings = _settings(files, config)
    _open_work_dir(work, settings, show_progress)
    executor = LocalExecutor(config.workers)
    wall: dict[str, float] = {}
    try:
        phase_start = time.perf_counter()
        n_chunks, stage_stats, clean_counters = _clean_phase(files, work, config, executor, show_progress)
        wall["read+clean"] = time.perf_counter() - phase_start
        if sum(stages.read_done(stages.clean_paths(work / "clean", c)["done.json"])["n_docs"]
               for c in range(n_chunks)) == 0:
            shutil.rmtree(work, ignore_errors=True)
            raise _nothing_left(stage_stats, "cleaning")

        phase_start = time.perf_counter()
        dedup_result = _dedup_phase(work, n_chunks, config, show_progress)
        wall["dedup"] = time.perf_counter() - phase_start
        stage_stats = merge_stage_maps([stage_stats, stages_from_json(dedup_result["stats"])])
        keep = np.load(work / "keep.npy")
        index = _load_corpus_index(work / "clean", n_chunks)
        stage_stats["split"] = _split_stage(dedup_result, int(index.n_bytes[keep].sum()))

        phase_start = time.perf_counter()
        tok_info = _tokenizer_phase(work, index.chunk_starts, keep, dedup_result, config, show_progress)
        wall["tokenizer"] = time.perf_counter() - phase_start

        phase_start = time.perf_counter()
        n_parts, part_counters = _tokenize_phase(work, index.chunk_starts, keep, dedup_result, tok_info["fingerprint"],
                                                 config, executor, show_progress)
        wall["tokenize"] = time.perf_counter() - phase_start
    finally:
        executor.shutdown()
    part_done = [stages.read_done(stages.part_paths(work / "parts", p)["done.json"]) for p in range(n_parts)]
    stage_stats = merge_stage_maps([stage_stats] + [stages_from_json(d["stats"]) for d in part_done])
    if sum(d["n_docs"]["train"] + d["n_docs"]["val"] for d in part_done) == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise _nothing_left(stage_stats, "tokenization")

    phase_start = time.perf_counter()
    splits, stage_stats["shard"], shard_counters = _shard_phase(work, n_parts, tok_info, config.shard_tokens,
                                                                show_progress)
    wall["shard"] = time.perf_counter() - phase_start
    wall["total"] = time.perf_counter() - started

    final = work / "final"
    tokenizers.save(tokenizers.load(work / "tokenizer"), final / "tokenizer")
    report = {
        "stages": stages_to_json(stage_stats),
        "wall_seconds": {phase: round(seconds, 3) for phase, seconds in wall.items()},
        "tokenizer": tok_info,
        "resume": {"clean_chunks": clean_counters, "token_parts": part_counters, "shards": shard_counters},
        "workers": config.workers,
        "table": render_table(stage_stats, wall).splitlines(),
    }
    store.write_json_atomic(final / REPORT, report, sort_keys=False)
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer": {"kind": tok_info["kind"], "fingerprint": tok_info["fingerprint"],
                      "vocab_size": tok_info["vocab_size"], "eot_id": tok_info["eot_id"]},
        "splits": splits,
        "inputs": [str(p) for p in files],
        "settings": config.settings_key(),
        "report": REPORT,
        "stages": {name: {"docs_in": stats.docs_in, "docs_out": stats.docs_out, "tokens_out": stats.tokens_out,
                          "dropped": dict(stats.dropped)} for name, stats in stage_stats.items()},
        "seconds": round(wall["total"], 3),
    }
    store.write_json_atomic(final / store.MANIFEST, manifest)
    if config.tfds:
        from gptjax.data.tfds_builder import build_tfds

        shutil.rmtree(final / "tfds", ignore_errors=True)
        build_tfds(final, final / "tfds")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        out_dir.rmdir()
    os.rename(final, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def read_report(data_dir: str | Path) -> dict:
    """The stage report of a prepared directory."""
    path = Path(data_dir) / REPORT
    if not path.is_file():
        raise GptjaxError(f"{data_dir} has no {REPORT} (prepared by an older gptjax)")
    return json.loads(path.read_text())


# ---- command line ---------------------------------------------------------------------------------------------


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `gptjax prepare`."""
    defaults = PipelineConfig()
    io_group = parser.add_argument_group("inputs and output")
    io_group.add_argument("--input", nargs="+", required=True,
                          help="files (.txt, .jsonl[.gz|.zst], .parquet), folders (recursive) or globs")
    io_group.add_argument("--out", required=True, help="new directory for the prepared data")
    io_group.add_argument("--text-field", default=defaults.text_field, help="JSONL key / Parquet column with the text")
    io_group.add_argument("--txt-mode", default=defaults.txt_mode, choices=("file", "blank_lines"),
                          help=".txt files: one document per file, or one per blank-line-separated paragraph")
    io_group.add_argument("--max-doc-mb", type=float, default=defaults.max_doc_bytes / 2**20,
                          help="documents (JSONL lines, whole .txt files) larger than this are dropped and counted")
    filters = parser.add_argument_group("cleaning")
    filters.add_argument("--raw", action="store_true",
                         help="tokenize the text as it is: no normalization, language or quality filter, dedup or "
                              "boilerplate removal (for a book or a curated corpus; what data.inputs does)")
    filters.add_argument("--no-normalize", action="store_true", help="skip UTF-8 repair / newline / NFC normalization")
    filters.add_argument("--languages", default="",
                         help="comma-separated ISO codes to keep, e.g. en or en,de (default: no language filter)")
    filters.add_argument("--lang-threshold", type=float, default=defaults.lang_threshold,
                         help="minimum probability of a kept language")
    filters.add_argument("--no-quality", action="store_true", help="skip the Gopher quality rules")
    filters.add_argument("--dedup", default=defaults.dedup, choices=stages.DEDUP_MODES,
                         help="near = exact, then MinHash/LSH near-duplicates")
    filters.add_argument("--jaccard", type=float, default=defaults.jaccard, help="near-duplicate Jaccard threshold")
    filters.add_argument("--num-perm", type=int, default=defaults.num_perm, help="MinHash permutations")
    filters.add_argument("--bands", type=int, default=defaults.bands, help="LSH bands (rows = num-perm // bands)")
    filters.add_argument("--ngram", type=int, default=defaults.ngram, help="word n-gram size of MinHash shingles")
    filters.add_argument("--boilerplate", default=defaults.boilerplate, choices=stages.BOILERPLATE_MODES,
                         help="remove lines or paragraphs repeated across documents")
    filters.add_argument("--boilerplate-max-count", type=int, default=defaults.boilerplate_max_count,
                         help="a line/paragraph seen more than this many times corpus-wide is removed")
    tok = parser.add_argument_group("tokenizer and shards")
    tok.add_argument("--tokenizer", default=defaults.tokenizer, choices=("char", "sentencepiece", "gpt2_bpe"))
    tok.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="sentencepiece vocabulary size")
    tok.add_argument("--model-type", default=defaults.model_type, choices=("bpe", "unigram"),
                     help="sentencepiece model type")
    tok.add_argument("--no-byte-fallback", action="store_true", help="sentencepiece: map unknown characters to <unk>")
    tok.add_argument("--sample-docs", type=int, default=defaults.sample_docs,
                     help="sentencepiece trains on about this many train documents")
    tok.add_argument("--sample-mb", type=float, default=defaults.sample_bytes / 2**20,
                     help="... and at most this much text")
    tok.add_argument("--tokenizer-dir", help="for gpt2_bpe: directory with vocab.json and merges.txt; for any kind: "
                                              "a prepared dir's tokenizer/ to reuse (one tokenizer for data.mixture)")
    tok.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    tok.add_argument("--shard-tokens", type=int, default=defaults.shard_tokens, help="tokens per shard (at most)")
    tok.add_argument("--tfds", action="store_true", help="also write a TFDS array_record copy under OUT/tfds")
    run = parser.add_argument_group("execution")
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    run.add_argument("--chunk-mb", type=float, default=defaults.chunk_bytes / 2**20,
                     help="text per work chunk (the unit of parallelism and of resume)")
    run.add_argument("--quiet", action="store_true", help="no progress bars or report table")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The PipelineConfig the parsed `gptjax prepare` flags describe (`--raw` overrides the cleaning flags)."""
    config = PipelineConfig(
        tokenizer=args.tokenizer, vocab_size=args.vocab_size, model_type=args.model_type,
        byte_fallback=not args.no_byte_fallback, tokenizer_dir=args.tokenizer_dir, sample_docs=args.sample_docs,
        sample_bytes=max(int(args.sample_mb * 2**20), 1), val_fraction=args.val_fraction, text_field=args.text_field,
        txt_mode=args.txt_mode, max_doc_bytes=max(int(args.max_doc_mb * 2**20), 1), normalize=not args.no_normalize,
        languages=tuple(code.strip() for code in args.languages.split(",") if code.strip()),
        lang_threshold=args.lang_threshold, quality=not args.no_quality, dedup=args.dedup, jaccard=args.jaccard,
        num_perm=args.num_perm, bands=args.bands, ngram=args.ngram, boilerplate=args.boilerplate,
        boilerplate_max_count=args.boilerplate_max_count, chunk_bytes=max(int(args.chunk_mb * 2**20), 1),
        shard_tokens=args.shard_tokens, workers=args.workers, tfds=args.tfds)
    if args.raw:
        config = dataclasses.replace(config, normalize=False, languages=(), quality=False, dedup="none",
                                     boilerplate="none")
    return config


def run_prepare(args: argparse.Namespace) -> int:
    """`gptjax prepare`: runs the pipeline, prints the report table and a one-line summary; returns 0."""
    config = config_from_args(args)
    manifest = run_pipeline(args.input, args.out, config, show_progress=not args.quiet)
    splits = manifest["splits"]
    if not args.quiet:
        print("\n".join(read_report(args.out)["table"]))
    print(f"prepared {args.out}: tokenizer {manifest['tokenizer']['kind']} (vocab {manifest['tokenizer']['vocab_size']}), "
          f"train {splits['train']['n_tokens']:,} tokens in {len(splits['train']['shards'])} shards, "
          f"val {splits['val']['n_tokens']:,} tokens; report in {Path(args.out) / REPORT}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`gptjax prepare` on its own (for scripts and tests); errors end as one line on stderr and exit code 1."""
    import sys

    parser = argparse.ArgumentParser(prog="gptjax prepare", description=__doc__.split("\n\n")[0])
    add_prepare_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_prepare(args)
    except GptjaxError as error:
        print(f"gptjax: error: {error}", file=sys.stderr)
        return 1
