"""`gptjax prepare --runner beam`: the phases of `gptjax prepare` as Apache Beam pipelines (Dataflow, Flink, Spark,
or Beam's DirectRunner), over the same work directory and the same pure stage functions as the local runner, so the
output is the same, byte for byte.

- clean: one element per input file; a worker reads it, cuts it into chunks and cleans each (`clean_task`); the
  driver then numbers the chunks in corpus order (file order, then position in the file).
- exact dedup: (normalized-text key, document) → GroupByKey → every document's root is the first of its group.
- near dedup: ((band, band hash), document) → GroupByKey → the candidate pairs of each group
  (`dedup.group_candidate_pairs`) → Distinct → pairs grouped by chunk and verified by the true Jaccard of their
  shingles → connected components by alternating large-star and small-star rounds (Kiveris et al., "Connected
  Components in MapReduce and Beyond", 2014), `_STAR_ROUNDS` per pipeline, run again from its output until a round
  changes no edge; then every edge links a document to its component's smallest. No step holds the graph in one
  worker.
- boilerplate: (unit key, count) per chunk → CombinePerKey(sum) → the keys seen too often.
- tokenizer: trained by the driver on the same deterministic sample as the local runner, then broadcast to the
  tokenize workers as a side input; tokenize and shard writing are one element per chunk / shard.

The driver keeps what the local runner keeps: a few numbers per document (keep mask, roots) and the tokenizer
sample. Workers read and write the work directory, so it must be visible to all of them (one machine for the
DirectRunner, a shared filesystem for a cluster).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from gptjax.config import DataConfig
from gptjax.errors import GptjaxError
from gptjax.fileio import write_json_atomic
from gptjax.prepare import dedup, readers
from gptjax.prepare.pipeline import chunk_files
from gptjax.prepare.pipeline.chunk_files import CorpusIndex
from gptjax.prepare.pipeline.clean import chunk_stage_stats, clean_task, document_chunks, read_stage, reader_config_for
from gptjax.prepare.pipeline.corpus_dedup import DedupKernels, dedup_phase
from gptjax.prepare.pipeline.results import (
    CleanResult,
    DedupResult,
    ResumeCounts,
    ShardResult,
    TokenizeResult,
    TokenizerInfo,
)
from gptjax.prepare.pipeline.shards import shard_phase
from gptjax.prepare.pipeline.tokenize import tokenize_phase
from gptjax.prepare.report import StageStats
from gptjax.prepare.stages import minhash_config

DIRECT_OPTIONS = ("--runner=DirectRunner", "--direct_running_mode=multi_processing",
                  "--default_sdk_harness_log_level=ERROR")
COUNTERS = "gptjax"
_STAR_ROUNDS = 3


def _beam():
    """The apache_beam module; its import-time warnings and its workers' tracebacks stay out of the terminal (a failed
    pipeline is one error line naming the worker's exception)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import apache_beam
    except ImportError as error:
        raise GptjaxError(f"--runner beam needs Apache Beam ({error}); pip install -e '.[beam]'") from None
    finally:
        root.setLevel(level)
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    return apache_beam


def pipeline_options(args: Iterable[str], workers: int):
    """Beam's PipelineOptions from the arguments after `--`, checked before any work: an unknown flag, a bad value
    or a runner that is not installed is one error line. No arguments: the DirectRunner with `workers` processes."""
    _beam()
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import create_runner

    args = list(args) or [*DIRECT_OPTIONS, f"--direct_num_workers={max(workers, 1)}"]
    shown = " ".join(args)
    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages):
            options = PipelineOptions(args)
            known = options.get_all_options(retain_unknown_options=False)
            everything = options.get_all_options(retain_unknown_options=True)
    except SystemExit:
        reason = next((line for line in reversed(messages.getvalue().splitlines()) if "error:" in line), shown)
        raise GptjaxError(f"Beam rejected the pipeline options ({reason.split('error:', 1)[-1].strip()}); fix the "
                          f"options after `--`") from None
    unknown = sorted(set(everything) - set(known))
    if unknown:
        raise GptjaxError(f"Beam does not know the pipeline option(s) {', '.join('--' + u for u in unknown)}; "
                          f"see `python -m apache_beam.examples.wordcount --help` for the options of this Beam")
    runner = known.get("runner") or "DirectRunner"
    try:
        create_runner(runner)
    except (ValueError, ImportError) as error:
        raise GptjaxError(f"the Beam runner {runner} is not available here ({str(error).splitlines()[0]}); install "
                          f"it (e.g. pip install 'apache-beam[gcp]' for DataflowRunner) or pick another --runner "
                          f"after `--`") from None
    return options


@contextlib.contextmanager
def _stderr_to(log_path: Path) -> Iterator[None]:
    """Sends this process's stderr (file descriptor 2, which local Beam workers inherit) to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _run(options, name: str, build: Callable, log_dir: Path) -> dict[str, int]:
    """Builds a pipeline with `build(pipeline)`, runs it to the end and returns its gptjax counters. Beam's own
    output (its workers' logs) goes to `log_dir/beam.log`; a failure is one error line naming the worker's
    exception."""
    beam = _beam()
    from apache_beam.metrics.metric import MetricsFilter

    pipeline = beam.Pipeline(options=options)
    build(pipeline)
    log_path = log_dir / "beam.log"
    try:
        with _stderr_to(log_path):
            result = pipeline.run()
            result.wait_until_finish()
    except GptjaxError:
        raise
    except Exception as error:  # a worker's exception arrives wrapped, with its traceback in the text
        lines = [line for line in str(error).splitlines() if "Error:" in line] or str(error).splitlines() or [""]
        raise GptjaxError(f"the Beam pipeline `{name}` failed: {lines[-1].strip()} (Beam's log: {log_path})") \
            from error
    counters = result.metrics().query(MetricsFilter().with_namespace(COUNTERS))["counters"]
    return {counter.key.metric.name: int(counter.committed or counter.attempted or 0) for counter in counters}


def _count(name: str, amount: int = 1) -> None:
    from apache_beam.metrics import Metrics

    Metrics.counter(COUNTERS, name).inc(amount)


def _write(pcollection, directory: Path, label: str) -> None:
    """Writes a PCollection of JSON-able elements as JSON lines under `directory` (replaced)."""
    beam = _beam()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    _ = (pcollection | f"{label} json" >> beam.Map(json.dumps)
         | f"{label} write" >> beam.io.WriteToText(str(directory / "part"), file_name_suffix=".jsonl"))


def _read(directory: Path) -> list:
    """Every element `_write` wrote under `directory`."""
    elements = []
    for path in sorted(directory.glob("part*.jsonl")):
        with open(path, encoding="utf-8") as f:
            elements += [json.loads(line) for line in f if line.strip()]
    return elements


# ---- clean ---------------------------------------------------------------------------------------------------------


def clean_file_task(item: tuple[int, Path], staging_dir: str, data: DataConfig) -> dict:
    """Reads and cleans one input file into chunks `staging_dir/FILE/CHUNK.*` (reused when done); returns what the
    driver needs: its chunk count, read counters and the read documents' totals."""
    file_index, path = item
    out = Path(staging_dir) / f"{file_index:06d}"
    marker = out / "file.json"
    cached = chunk_files.read_done(marker)
    if cached is not None:
        return cached
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    read_stats = readers.ReadStats()
    chunk_stats = StageStats()
    documents = readers.read_file(path, reader_config_for(data), read_stats)
    n_chunks = 0
    for n_chunks, chunk in enumerate(document_chunks(documents, data.prepare.chunk_bytes, chunk_stats), 1):
        clean_task(str(out), n_chunks - 1, chunk, data)
    result = {"file": file_index, "n_chunks": n_chunks, "read_counts": dict(read_stats.counts),
              "read_examples": read_stats.examples, "chunk_stats": chunk_stats.to_json()}
    write_json_atomic(marker, result)
    return result


def _merged_reads(results: list[dict]) -> tuple[readers.ReadStats, StageStats]:
    """The read counters and document totals of all files, merged in file order (examples: the first ones)."""
    read_stats = readers.ReadStats()
    chunk_stats = StageStats()
    for result in results:
        for reason, count in result["read_counts"].items():
            read_stats.counts[reason] += count
        for reason, examples in result["read_examples"].items():
            kept = read_stats.examples.setdefault(reason, [])
            kept += examples[:read_stats.max_examples_per_reason - len(kept)]
        chunk_stats.merge(StageStats.from_json(result["chunk_stats"]))
    return read_stats, chunk_stats


def _number_chunks(staging: Path, clean_dir: Path, results: list[dict]) -> int:
    """Moves every file's chunks into `clean_dir` numbered in corpus order (done markers last); returns the count."""
    number = 0
    for result in results:
        for local in range(result["n_chunks"]):
            source = chunk_files.clean_paths(staging / f"{result['file']:06d}", local)
            target = chunk_files.clean_paths(clean_dir, number)
            for name in sorted(source, key=lambda name: name == "done.json"):
                os.replace(source[name], target[name])
            number += 1
    return number


# ---- dedup kernels -------------------------------------------------------------------------------------------------


def _alive_slice(alive_path: str, start: int, n_docs: int) -> np.ndarray:
    return np.load(alive_path, mmap_mode="r")[start:start + n_docs]


def exact_key_docs(chunk: tuple[int, int, int], clean_dir: str, alive_path: str) -> Iterator[tuple[bytes, int]]:
    """(128-bit exact key, global document) of every alive document of one chunk (chunk, first doc, n docs)."""
    number, start, n_docs = chunk
    keys = np.load(chunk_files.clean_paths(Path(clean_dir), number)["exact.npy"])
    for local in np.flatnonzero(_alive_slice(alive_path, start, n_docs)):
        yield keys[local].tobytes(), start + int(local)


def first_member_roots(group: tuple[object, Iterable[int]]) -> Iterator[tuple[int, int]]:
    """(document, root) of every member of one group but its first."""
    members = sorted(group[1])
    for member in members[1:]:
        yield member, members[0]


def band_key_docs(chunk: tuple[int, int, int], clean_dir: str, alive_path: str) -> Iterator[tuple[tuple, int]]:
    """((band, band hash), global document) of every alive document of one chunk, for every band."""
    number, start, n_docs = chunk
    bands_BN = np.load(chunk_files.clean_paths(Path(clean_dir), number)["bands.npy"])
    signed_BN = bands_BN.view(np.int64)  # Beam's integer coder holds signed 64-bit values
    for local in np.flatnonzero(_alive_slice(alive_path, start, n_docs)):
        for band in range(bands_BN.shape[0]):
            yield (band, int(signed_BN[band, local])), start + int(local)


def group_pairs(group: tuple[object, Iterable[int]]) -> Iterator[tuple[int, int]]:
    """The candidate pairs of one band group (the same pairs the local runner verifies)."""
    members = np.sort(np.fromiter(group[1], dtype=np.int64))
    if members.size > 1:
        _count("candidate_groups")
        yield from dedup.group_candidate_pairs(members)


def _chunk_of(doc: int, chunk_starts: list[int]) -> int:
    return int(np.searchsorted(chunk_starts, doc, side="right")) - 1


def verify_pairs(chunk_pairs: tuple[int, Iterable[tuple[int, int]]], clean_dir: str, chunk_starts: list[int],
                 ngram: int, threshold: float) -> Iterator[tuple[int, int]]:
    """The pairs (grouped by the chunk of their first document) whose shingle Jaccard reaches `threshold`."""
    chunk_readers: dict[int, chunk_files.CleanChunkReader] = {}
    shingles: dict[int, np.ndarray] = {}

    def doc_shingles(doc: int) -> np.ndarray:
        if doc not in shingles:
            chunk = _chunk_of(doc, chunk_starts)
            if chunk not in chunk_readers:
                chunk_readers[chunk] = chunk_files.CleanChunkReader(Path(clean_dir), chunk)
            shingles[doc] = dedup.shingle_hashes(chunk_readers[chunk].text(doc - chunk_starts[chunk]), ngram)
        return shingles[doc]

    for first, second in chunk_pairs[1]:
        _count("verified_pairs")
        if dedup.jaccard(doc_shingles(first), doc_shingles(second)) >= threshold:
            yield first, second


def large_star(node: tuple[int, Iterable[int]]) -> Iterator[tuple[int, int]]:
    """Links every neighbour larger than the node to the smallest of the node's closed neighbourhood."""
    node_id, neighbours = node
    neighbours = set(neighbours)
    smallest = min(neighbours | {node_id})
    for neighbour in neighbours:
        if neighbour > node_id:
            yield neighbour, smallest


def small_star(node: tuple[int, Iterable[int]]) -> Iterator[tuple[int, int]]:
    """Links the node and its smaller neighbours to the smallest of them."""
    node_id, neighbours = node
    members = {neighbour for neighbour in neighbours if neighbour < node_id} | {node_id}
    smallest = min(members)
    for member in members:
        if member != smallest:
            yield member, smallest


def count_changed(edge: tuple[tuple[int, int], dict]) -> None:
    _, sides = edge
    if not (list(sides["before"]) and list(sides["after"])):
        _count("edges_changed")


def _star_rounds(edges, rounds: int, label: str):
    """`rounds` rounds of large-star then small-star (Kiveris et al. 2014) over edges (larger, smaller); counts the
    edges the last round changed. At the fixed point every component is a star around its smallest node."""
    beam = _beam()
    for round_number in range(rounds):
        name = f"{label} round {round_number}"
        before = edges
        for step, operation in (("large", large_star), ("small", small_star)):
            edges = (edges | f"{name} {step} both" >> beam.FlatMap(_both_directions)
                     | f"{name} {step} group" >> beam.GroupByKey()
                     | f"{name} {step} star" >> beam.FlatMap(operation)
                     | f"{name} {step} distinct" >> beam.Distinct())
        if round_number == rounds - 1:
            _ = ({"before": before | f"{name} key before" >> beam.Map(lambda edge: (edge, None)),
                  "after": edges | f"{name} key after" >> beam.Map(lambda edge: (edge, None))}
                 | f"{name} compare" >> beam.CoGroupByKey() | f"{name} changed" >> beam.Map(count_changed))
    return edges


def _json_pair(line: str) -> tuple[int, int]:
    first, second = json.loads(line)
    return int(first), int(second)


def _both_directions(edge: tuple[int, int]) -> Iterator[tuple[int, int]]:
    yield edge[0], edge[1]
    yield edge[1], edge[0]


def _larger_first(edge: tuple[int, int]) -> tuple[int, int]:
    return max(edge), min(edge)


def converge_stars(options, edges_dir: Path, log_dir: Path) -> int:
    """Runs star rounds over the edges written under `edges_dir` (replaced after each pipeline) until a round changes
    no edge: every edge is then (node, smallest node of its component). Returns the pipelines run."""
    beam = _beam()
    next_dir = edges_dir.with_name(edges_dir.name + ".next")
    runs = 0
    while True:
        def build(pipeline):
            edges = (pipeline | "edges" >> beam.io.ReadFromText(str(edges_dir / "part*.jsonl"))
                     | "edge pairs" >> beam.Map(_json_pair))
            _write(_star_rounds(edges, _STAR_ROUNDS, "components"), next_dir, "edges")

        runs += 1
        changed = _run(options, "near dedup components", build, log_dir).get("edges_changed", 0)
        shutil.rmtree(edges_dir)
        os.rename(next_dir, edges_dir)
        if not changed:
            return runs


def _per_chunk(pipeline, index: CorpusIndex, fn: Callable, *args):
    """`fn((chunk, first document, n documents), *args)`'s elements over every cleaned chunk, spread over workers."""
    beam = _beam()
    starts = index.chunk_starts.tolist()
    chunks = [(chunk, starts[chunk], starts[chunk + 1] - starts[chunk]) for chunk in range(index.n_chunks)]
    return (pipeline | "chunks" >> beam.Create(chunks) | "spread" >> beam.Reshuffle()
            | fn.__name__ >> beam.FlatMap(fn, *args))


class BeamRunner:
    """The phases of `gptjax prepare` on Apache Beam (see the module docstring)."""

    name = "beam"

    def __init__(self, options):
        self.options = options

    def _dir(self, work: Path, name: str) -> Path:
        return work / "beam" / name

    def clean(self, files: list[Path], work: Path, data: DataConfig, show_progress: bool) -> CleanResult:
        beam = _beam()
        marker = self._dir(work, "clean.json")
        done = chunk_files.read_done(marker)
        staging = self._dir(work, "clean_files")
        if done is None:
            listing = self._dir(work, "clean_results")
            items = list(enumerate(files))

            def build(pipeline):
                results = (pipeline | "files" >> beam.Create(items) | "spread files" >> beam.Reshuffle()
                           | "clean" >> beam.Map(clean_file_task, str(staging), data))
                _write(results, listing, "clean results")

            _run(self.options, "read+clean", build, self._dir(work, "logs"))
            results = sorted(_read(listing), key=lambda result: result["file"])
            for stale in (work / "clean").glob("*"):
                stale.unlink()
            n_chunks = _number_chunks(staging, work / "clean", results)
            read_stats, chunk_stats = _merged_reads(results)
            done = {"n_chunks": n_chunks, "read_counts": dict(read_stats.counts), "read_examples": read_stats.examples,
                    "chunk_stats": chunk_stats.to_json()}
            write_json_atomic(marker, done)
            shutil.rmtree(staging, ignore_errors=True)
            computed, reused = len(files), 0
        else:
            computed, reused = 0, len(files)
        read_stats, chunk_stats = _merged_reads([{**done, "file": 0}])
        stage_stats = chunk_stage_stats(work / "clean", done["n_chunks"])
        stage_stats["read"] = read_stage(read_stats, chunk_stats, files)
        return CleanResult(done["n_chunks"], stage_stats, ResumeCounts(reused, computed))

    def _exact_roots(self, index: CorpusIndex, alive: np.ndarray, clean_dir: Path, data: DataConfig,
                     show_progress: bool) -> tuple[np.ndarray, dict]:
        beam = _beam()
        work = clean_dir.parent
        alive_path = self._save_alive(work, alive)
        out = self._dir(work, "exact_roots")

        def build(pipeline):
            roots = (_per_chunk(pipeline, index, exact_key_docs, str(clean_dir), alive_path)
                     | "group keys" >> beam.GroupByKey() | "roots" >> beam.FlatMap(first_member_roots))
            _write(roots, out, "roots")

        _run(self.options, "exact dedup", build, self._dir(work, "logs"))
        return self._roots(index.n_docs, _read(out)), {}

    def _near_roots(self, index: CorpusIndex, alive: np.ndarray, clean_dir: Path, data: DataConfig,
                    show_progress: bool) -> tuple[np.ndarray, dict]:
        beam = _beam()
        work = clean_dir.parent
        alive_path = self._save_alive(work, alive)
        minhash = minhash_config(data.prepare)
        chunk_starts = index.chunk_starts.tolist()
        stars_dir = self._dir(work, "near_stars")

        def build(pipeline):
            pairs = (_per_chunk(pipeline, index, band_key_docs, str(clean_dir), alive_path)
                     | "group bands" >> beam.GroupByKey() | "pairs" >> beam.FlatMap(group_pairs)
                     | "distinct pairs" >> beam.Distinct())
            edges = (pairs | "by chunk" >> beam.Map(lambda pair: (_chunk_of(pair[0], chunk_starts), pair))
                     | "group by chunk" >> beam.GroupByKey()
                     | "verify" >> beam.FlatMap(verify_pairs, str(clean_dir), chunk_starts, minhash.ngram,
                                                minhash.threshold)
                     | "larger first" >> beam.Map(_larger_first))
            _write(_star_rounds(edges, _STAR_ROUNDS, "components"), stars_dir, "edges")

        counters = _run(self.options, "near dedup", build, self._dir(work, "logs"))
        if counters.get("edges_changed", 0):
            converge_stars(self.options, stars_dir, self._dir(work, "logs"))
        notes = {"candidate_groups": counters.get("candidate_groups", 0),
                 "verified_pairs": counters.get("verified_pairs", 0)}
        return self._roots(index.n_docs, _read(stars_dir)), notes

    def _frequent_units(self, clean_dir: Path, index: CorpusIndex, alive: np.ndarray, max_count: int) -> np.ndarray:
        beam = _beam()
        work = clean_dir.parent
        alive_path = self._save_alive(work, alive)
        out = self._dir(work, "frequent_units")

        def build(pipeline):
            keys = (_per_chunk(pipeline, index, unit_key_counts, str(clean_dir), alive_path)
                    | "sum" >> beam.CombinePerKey(sum)
                    | "frequent" >> beam.Filter(lambda key_count: key_count[1] > max_count)
                    | "keys" >> beam.Keys())
            _write(keys, out, "keys")

        _run(self.options, "boilerplate", build, self._dir(work, "logs"))
        return np.sort(np.array(_read(out), dtype=np.int64).view(np.uint64))

    def _save_alive(self, work: Path, alive: np.ndarray) -> str:
        path = self._dir(work, "alive.npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        chunk_files.save_npy_atomic(path, alive)
        return str(path)

    @staticmethod
    def _roots(n_docs: int, doc_roots: list) -> np.ndarray:
        roots = np.arange(n_docs, dtype=np.int64)
        if doc_roots:
            doc_roots_R2 = np.array(doc_roots, dtype=np.int64)
            roots[doc_roots_R2[:, 0]] = doc_roots_R2[:, 1]
        return roots

    def dedup(self, work: Path, n_chunks: int, data: DataConfig, show_progress: bool) -> DedupResult:
        kernels = DedupKernels(exact=self._exact_roots, near=self._near_roots, frequent_units=self._frequent_units)
        return dedup_phase(work, n_chunks, data, show_progress, kernels)

    def tokenize(self, work: Path, starts: np.ndarray, keep: np.ndarray, dedup_result: DedupResult,
                 fingerprint: str, data: DataConfig, show_progress: bool) -> TokenizeResult:
        executor = BeamExecutor(self.options, self._dir(work, "tokenize"), _dir_files(work / "tokenizer"))
        return tokenize_phase(work, starts, keep, dedup_result, fingerprint, data, executor, show_progress)

    def shard(self, work: Path, n_parts: int, tok: TokenizerInfo, shard_tokens: int,
              show_progress: bool) -> ShardResult:
        return shard_phase(work, n_parts, tok, shard_tokens, show_progress,
                           BeamExecutor(self.options, self._dir(work, "shards")))

    def shutdown(self) -> None:
        pass


def unit_key_counts(chunk: tuple[int, int, int], clean_dir: str, alive_path: str) -> Iterator[tuple[int, int]]:
    """(line/paragraph key as a signed 64-bit int, occurrences) in the alive documents of one chunk."""
    number, start, n_docs = chunk
    paths = chunk_files.clean_paths(Path(clean_dir), number)
    mask = np.repeat(np.asarray(_alive_slice(alive_path, start, n_docs)), np.load(paths["unit_counts.npy"]))
    keys, counts = np.unique(np.load(paths["units.npy"])[mask], return_counts=True)
    yield from zip(map(int, keys.view(np.int64)), map(int, counts))


def _dir_files(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` by relative path (what a side input carries to the workers)."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


def materialize(files: dict[str, bytes]) -> str:
    """The side input's files as a directory on this worker (written once per content, atomically)."""
    digest = hashlib.sha256(json.dumps(sorted((name, hashlib.sha256(data).hexdigest())
                                              for name, data in files.items())).encode()).hexdigest()[:24]
    target = Path(tempfile.gettempdir()) / f"gptjax-side-{digest}"
    if not target.is_dir():
        scratch = Path(tempfile.mkdtemp(prefix=".gptjax-side-"))
        for name, data in files.items():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            (scratch / name).write_bytes(data)
        try:
            os.rename(scratch, target)
        except OSError:  # another worker materialized it first
            shutil.rmtree(scratch, ignore_errors=True)
    return str(target)


def call_task(item: tuple[int, tuple], fn: Callable, tokenizer_files: dict[str, bytes] | None) -> list:
    """[index, fn(*args)], with the broadcast tokenizer's directory as `tokenizer_dir` when there is one."""
    index, args = item
    if tokenizer_files is None:
        return [index, fn(*args)]
    return [index, fn(*args, tokenizer_dir=materialize(tokenizer_files))]


class BeamExecutor:
    """An `Executor` whose `map` is one Beam pipeline: one element per task, results read back in order.

    `tokenizer_files`: a tokenizer directory's files, broadcast to every worker as a side input and passed to each
    task as `tokenizer_dir`."""

    def __init__(self, options, results_dir: Path, tokenizer_files: dict[str, bytes] | None = None):
        self.options = options
        self.results_dir = results_dir
        self.tokenizer_files = tokenizer_files

    def map(self, fn: Callable, arguments: Iterable[tuple]) -> Iterator:
        beam = _beam()
        tasks = list(enumerate(arguments))
        if not tasks:
            return iter(())

        def build(pipeline):
            side = None
            if self.tokenizer_files is not None:
                side = beam.pvalue.AsSingleton(pipeline | "tokenizer" >> beam.Create([self.tokenizer_files]))
            results = (pipeline | "tasks" >> beam.Create(tasks) | "spread" >> beam.Reshuffle()
                       | "run" >> beam.Map(call_task, fn, side))
            _write(results, self.results_dir, "results")

        _run(self.options, fn.__name__, build, self.results_dir.parent / "logs")
        return iter([result for _, result in sorted(_read(self.results_dir), key=lambda item: item[0])])

    def shutdown(self) -> None:
        pass
