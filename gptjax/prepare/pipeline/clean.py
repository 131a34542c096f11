"""Phase 1: read every input and clean it chunk by chunk (normalize, language, quality; dedup keys)."""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

from gptjax.config import DataConfig
from gptjax.prepare import readers, stages
from gptjax.prepare.documents import Document
from gptjax.prepare.pipeline import chunk_files
from gptjax.prepare.pipeline.executor import Executor
from gptjax.prepare.pipeline.results import CleanResult, ResumeCounts
from gptjax.prepare.report import StageStats, merge_stage_maps, stages_from_json

_READ_REPAIR_REASONS = ("files", "documents", "invalid_utf8_bytes", "invalid_utf8_records", "lone_surrogates")
_FILE_LEVEL_DROPS = ("binary_file", "empty_file", "unsupported_file", "corrupt_file", "missing_text_column")


def reader_config_for(data: DataConfig) -> readers.ReaderConfig:
    prepare = data.prepare
    return readers.ReaderConfig(txt_mode=prepare.txt_mode, text_field=prepare.text_field,
                                text_column=prepare.text_field, max_record_bytes=prepare.max_doc_bytes)


def clean_task(clean_dir: str, chunk: int, documents: list[Document], data: DataConfig) -> None:
    """Cleans one chunk and writes its files (runs in a worker: module level, pure over its arguments)."""
    chunk_files.write_clean_chunk(Path(clean_dir), chunk, stages.clean_chunk(documents, data))


def document_chunks(documents: Iterable[Document], chunk_bytes: int, stats: StageStats) -> Iterator[list[Document]]:
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


def read_stage(read_stats: readers.ReadStats, chunk_stats: StageStats, files: list[Path]) -> StageStats:
    """The read stage's report entry: documents out, records and files dropped by reason, repairs as notes."""
    stats = StageStats(docs_out=chunk_stats.docs_out, bytes_out=chunk_stats.bytes_out, seconds=chunk_stats.seconds)
    stats.bytes_in = sum(path.stat().st_size for path in files)
    for reason, count in read_stats.counts.items():
        if reason in _READ_REPAIR_REASONS:
            stats.notes[reason] += count
        else:
            stats.drop(reason, count=count)
            stats.examples[reason] = list(read_stats.examples.get(reason, []))
    stats.docs_in = stats.docs_out + sum(c for r, c in stats.dropped.items() if r not in _FILE_LEVEL_DROPS)
    return stats


def clean_phase(files: list[Path], work: Path, data: DataConfig, executor: Executor,
                show_progress: bool) -> CleanResult:
    """Reads all inputs and cleans every chunk not done yet."""
    prepare = data.prepare
    clean_dir = work / "clean"
    read_stats = readers.ReadStats()
    reader_config = reader_config_for(data)
    chunk_stats = StageStats()
    documents = readers.read_documents(files, reader_config, read_stats)
    reused = computed = n_chunks = 0
    bar = tqdm(desc="read+clean", unit="chunk", disable=not show_progress, leave=False)

    def pending_tasks() -> Iterator[tuple]:
        nonlocal n_chunks, reused
        for index, chunk in enumerate(document_chunks(documents, prepare.chunk_bytes, chunk_stats)):
            n_chunks = index + 1
            if chunk_files.read_done(chunk_files.clean_paths(clean_dir, index)["done.json"]) is not None:
                reused += 1
                bar.update(1)
                continue
            yield str(clean_dir), index, chunk, data

    for _ in executor.map(clean_task, pending_tasks()):
        computed += 1
        bar.update(1)
    bar.close()
    stage_stats = chunk_stage_stats(clean_dir, n_chunks)
    stage_stats["read"] = read_stage(read_stats, chunk_stats, files)
    return CleanResult(n_chunks, stage_stats, ResumeCounts(reused, computed))


def chunk_stage_stats(clean_dir: Path, n_chunks: int) -> dict[str, StageStats]:
    """The cleaning stages' report entries, summed over the cleaned chunks' done markers in corpus order."""
    done = [chunk_files.read_done(chunk_files.clean_paths(clean_dir, i)["done.json"]) for i in range(n_chunks)]
    return merge_stage_maps([stages_from_json(d["stats"]) for d in done])


def n_clean_documents(work: Path, n_chunks: int) -> int:
    """How many documents survived cleaning, over all chunks."""
    return sum(chunk_files.read_done(chunk_files.clean_paths(work / "clean", c)["done.json"])["n_docs"]
               for c in range(n_chunks))
