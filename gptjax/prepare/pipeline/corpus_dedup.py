"""Phase 2: corpus-wide exact and near dedup over the cleaned chunks, boilerplate counting, the split decision.

Exact dedup keeps the first document of every 128-bit key; near dedup (gptjax.prepare.dedup.near_duplicate_roots)
reads the LSH band hashes one band at a time and verifies candidates by the true Jaccard of their shingles,
recomputed from the texts. Memory is a few arrays per document. Saves the keep mask, each duplicate's kept copy
and the stage that dropped it; cached in `dedup.json`.
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gptjax.config import DataConfig
from gptjax.fileio import write_json_atomic
from gptjax.prepare import dedup
from gptjax.prepare.pipeline import chunk_files
from gptjax.prepare.pipeline.chunk_files import CleanChunkReader, CorpusIndex, SourceNames
from gptjax.prepare.pipeline.results import DedupResult
from gptjax.prepare.report import StageStats
from gptjax.prepare.stages import minhash_config

_BOILERPLATE_PARTITION_KEYS = 1 << 22
_SHINGLE_CACHE_DOCS = 4096


def _duplicate_stats(index: CorpusIndex, alive: np.ndarray, keep: np.ndarray, roots: np.ndarray, reason: str,
                     names: SourceNames) -> StageStats:
    """A dedup stage's report entry: documents in/out, drops with examples, cluster counts."""
    stats = StageStats(docs_in=int(alive.sum()), bytes_in=int(index.n_bytes[alive].sum()),
                       docs_out=int(keep.sum()), bytes_out=int(index.n_bytes[keep].sum()))
    dropped = np.flatnonzero(alive & ~keep)
    if dropped.size:
        stats.drop(reason, count=int(dropped.size))
        stats.examples[reason] = [f"{names.source(int(d))} (duplicate of {names.source(int(roots[d]))})"
                                  for d in dropped[:3]]
    sizes = np.bincount(roots[alive], minlength=len(roots)) if alive.any() else np.zeros(0, np.int64)
    stats.notes["clusters"] = int((sizes > 1).sum())
    stats.notes["largest_cluster"] = int(sizes.max()) if sizes.size else 0
    return stats


def _exact_roots(index: CorpusIndex, alive: np.ndarray, clean_dir: Path, data: DataConfig,
                 show_progress: bool) -> tuple[np.ndarray, dict]:
    return dedup.exact_roots(index.exact_keys, alive), {}


def _near_roots(index: CorpusIndex, alive: np.ndarray, clean_dir: Path, data: DataConfig,
                show_progress: bool) -> tuple[np.ndarray, dict]:
    minhash = minhash_config(data.prepare)
    chunk_readers: dict[int, CleanChunkReader] = {}

    @functools.lru_cache(maxsize=_SHINGLE_CACHE_DOCS)
    def shingles(doc: int) -> np.ndarray:
        chunk, local = index.locate(doc)
        if chunk not in chunk_readers:
            chunk_readers[chunk] = CleanChunkReader(clean_dir, chunk)
        return dedup.shingle_hashes(chunk_readers[chunk].text(local), minhash.ngram)

    def similar(first: int, second: int) -> bool:
        return dedup.jaccard(shingles(first), shingles(second)) >= minhash.threshold

    def band_columns() -> Iterator[np.ndarray]:
        for band in tqdm(range(minhash.bands), desc="near dedup", unit="band", disable=not show_progress, leave=False):
            columns = [np.load(chunk_files.clean_paths(clean_dir, c)["bands.npy"], mmap_mode="r")[band]
                       for c in range(index.n_chunks)]
            yield np.concatenate(columns) if columns else np.zeros(0, np.uint64)

    return dedup.near_duplicate_roots(index.n_docs, band_columns(), alive, similar)


Clustering = Callable[[CorpusIndex, np.ndarray, Path, DataConfig, bool], tuple[np.ndarray, dict]]


@dataclass(frozen=True)
class DedupKernels:
    """The corpus-wide computations of this phase, which a runner may distribute: exact and near clustering (each
    document's root: the first member of its cluster) and the frequent boilerplate unit keys."""

    exact: Clustering
    near: Clustering
    frequent_units: Callable[[Path, CorpusIndex, np.ndarray, int], np.ndarray]




def frequent_unit_keys(clean_dir: Path, index: CorpusIndex, alive: np.ndarray, max_count: int) -> np.ndarray:
    """Sorted keys of the lines/paragraphs seen more than `max_count` times in the surviving documents.

    Counted in hash partitions of about 4M keys each, so memory stays bounded whatever the corpus size.
    """
    per_chunk = []
    total = 0
    for chunk in range(index.n_chunks):
        paths = chunk_files.clean_paths(clean_dir, chunk)
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


LOCAL_KERNELS = DedupKernels(exact=_exact_roots, near=_near_roots, frequent_units=frequent_unit_keys)


def dedup_phase(work: Path, n_chunks: int, data: DataConfig, show_progress: bool,
                kernels: DedupKernels = LOCAL_KERNELS) -> DedupResult:
    """Corpus-wide exact/near dedup, boilerplate counting and the split decision (reused when cached)."""
    marker = work / "dedup.json"
    cached = chunk_files.read_done(marker)
    if cached is not None:
        return DedupResult.from_json(cached)
    prepare = data.prepare
    clean_dir = work / "clean"
    index = chunk_files.load_corpus_index(clean_dir, n_chunks)
    names = SourceNames(clean_dir, index)
    alive = np.ones(index.n_docs, dtype=bool)
    duplicate_of = np.full(index.n_docs, -1, dtype=np.int64)
    duplicate_stage = np.zeros(index.n_docs, dtype=np.int8)
    stage_stats: dict[str, StageStats] = {}
    for stage, modes, cluster in (("dedup_exact", ("exact", "near"), kernels.exact),
                                  ("dedup_near", ("near",), kernels.near)):
        if prepare.dedup not in modes:
            continue
        started = time.perf_counter()
        roots, counters = cluster(index, alive, clean_dir, data, show_progress)
        keep = alive & (roots == np.arange(index.n_docs))
        stage_stats[stage] = _duplicate_stats(index, alive, keep, roots, chunk_files.DUPLICATE_REASONS[stage], names)
        stage_stats[stage].notes.update(counters)
        stage_stats[stage].seconds = time.perf_counter() - started
        dropped = alive & ~keep
        duplicate_of[dropped] = roots[dropped]
        duplicate_stage[dropped] = chunk_files.DUPLICATE_STAGES.index(stage)
        alive = keep
    if prepare.boilerplate != "none":
        started = time.perf_counter()
        frequent = kernels.frequent_units(clean_dir, index, alive, prepare.boilerplate_max_count)
        chunk_files.save_npy_atomic(work / chunk_files.BOILERPLATE, frequent)
        stage_stats["boilerplate"] = StageStats(seconds=time.perf_counter() - started)
        stage_stats["boilerplate"].notes["frequent_units"] = int(frequent.size)
    n_val = int((alive & index.in_val).sum())
    n_train = int(alive.sum()) - n_val
    char_cut = data.val_fraction > 0 and (n_train == 0 or n_val == 0)
    chunk_files.save_npy_atomic(work / chunk_files.DUPLICATE_OF, duplicate_of)
    chunk_files.save_npy_atomic(work / chunk_files.DUPLICATE_STAGE, duplicate_stage)
    chunk_files.save_npy_atomic(work / chunk_files.KEEP, alive)
    result = DedupResult(stage_stats, n_train, n_val, bool(char_cut))
    write_json_atomic(marker, result.to_json())
    return result
