"""Who runs the phases of `gptjax prepare`: the `PhaseRunner` interface and `LocalRunner`, the process pool.

`run_pipeline` orders the phases, keeps the work directory and writes the output; a runner decides where each
phase's work happens. Every runner reads and writes the same work directory with the same pure stage functions, so
they produce the same output (gptjax.prepare.pipeline.beam runs the phases as Apache Beam pipelines).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from gptjax.config import DataConfig
from gptjax.prepare.pipeline.clean import clean_phase
from gptjax.prepare.pipeline.corpus_dedup import dedup_phase
from gptjax.prepare.pipeline.executor import Executor
from gptjax.prepare.pipeline.results import CleanResult, DedupResult, ShardResult, TokenizeResult, TokenizerInfo
from gptjax.prepare.pipeline.shards import shard_phase
from gptjax.prepare.pipeline.tokenize import tokenize_phase


class PhaseRunner(Protocol):
    name: str

    def clean(self, files: list[Path], work: Path, data: DataConfig, show_progress: bool) -> CleanResult:
        """Reads and cleans every input into `work/clean` (chunks numbered in corpus order)."""
        ...

    def dedup(self, work: Path, n_chunks: int, data: DataConfig, show_progress: bool) -> DedupResult:
        """Exact and near dedup, boilerplate counting and the split decision."""
        ...

    def tokenize(self, work: Path, starts: np.ndarray, keep: np.ndarray, dedup: DedupResult, fingerprint: str,
                 data: DataConfig, show_progress: bool) -> TokenizeResult:
        """Tokenizes the survivors into `work/parts`."""
        ...

    def shard(self, work: Path, n_parts: int, tok: TokenizerInfo, shard_tokens: int,
              show_progress: bool) -> ShardResult:
        """Writes the final shards into `work/final`."""
        ...

    def shutdown(self) -> None:
        ...


class LocalRunner:
    """The phases on this machine: per-chunk tasks on `executor`, corpus-wide work in this process."""

    name = "local"

    def __init__(self, executor: Executor):
        self.executor = executor

    def clean(self, files: list[Path], work: Path, data: DataConfig, show_progress: bool) -> CleanResult:
        return clean_phase(files, work, data, self.executor, show_progress)

    def dedup(self, work: Path, n_chunks: int, data: DataConfig, show_progress: bool) -> DedupResult:
        return dedup_phase(work, n_chunks, data, show_progress)

    def tokenize(self, work: Path, starts: np.ndarray, keep: np.ndarray, dedup: DedupResult, fingerprint: str,
                 data: DataConfig, show_progress: bool) -> TokenizeResult:
        return tokenize_phase(work, starts, keep, dedup, fingerprint, data, self.executor, show_progress)

    def shard(self, work: Path, n_parts: int, tok: TokenizerInfo, shard_tokens: int,
              show_progress: bool) -> ShardResult:
        return shard_phase(work, n_parts, tok, shard_tokens, show_progress)

    def shutdown(self) -> None:
        self.executor.shutdown()
