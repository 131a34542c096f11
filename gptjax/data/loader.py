"""grain input pipeline: every batch is a pure function of (seed, step), so a restored iterator continues exactly.

Rows are random windows of block_size + 1 tokens (window k of seed s starts at hash(s, k)), or, with
`data.packing`, rows packed from whole documents with segment ids and positions (gptjax.data.packing). With
`data.mixture` the rows of each step are shared among several prepared datasets in proportion to their weights:
component c has had exactly floor(step * B * W_c) - floor(step * B * W_{c-1}) rows before `step` (W = cumulative
normalised weights, B = global batch), taken in order from its own row stream, and the step's rows are shuffled
by a hash of (seed, step). `data.mixture_stages` changes the weights from given steps on: each stage adds its own
such counts over its steps, so a component's rows before any step stay a pure function of the config. Each JAX
process builds only its own rows of the global batch; with `data.workers > 0` grain builds batches in that many
worker processes (same batches, same state). The grain iterator state goes into every checkpoint.

Shards are read through `gptjax.data.remote`: memory maps of local files, or byte ranges of a gs:// dataset's shards
through a bounded block cache, each step's batch function reading ahead this process's rows of the next
`data.remote_readahead_steps` steps; the batches are the same either way.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import grain
import numpy as np

from gptjax.config import MixtureStage, mixture_schedule
from gptjax.data import remote
from gptjax.data.hashing import splitmix64
from gptjax.data.packing import DocumentTable, PackedSampler, shuffled_order
from gptjax.errors import GptjaxError

__all__ = ["WindowSampler", "PackedSampler", "eval_batches", "mixture_rows", "step_iterator", "train_iterator"]


class WindowSampler:
    """Uniform random windows over all shards of a split: window k of seed s starts at hash(s, k) mod #starts.

    Tokens come from `shards` (`remote.LocalShards` or `remote.RemoteShards`; a list of shard paths is opened as
    local shards), which pickle without their maps or caches, so a sampler can go to grain workers.
    """

    def __init__(self, shards: list[Path] | remote.LocalShards | remote.RemoteShards, window: int, seed: int):
        self.window = window
        self.seed = seed
        self.shards = remote.LocalShards(shards) if isinstance(shards, list) else shards
        lengths = self.shards.lengths
        starts = np.array([max(n - window + 1, 0) for n in lengths], dtype=np.int64)
        if starts.sum() == 0:
            longest = max(lengths, default=0)
            raise GptjaxError(f"the split has {longest} tokens, fewer than block_size + 1 = {window}; "
                              f"lower model.block_size or add data")
        self.cum_starts = np.cumsum(starts)

    @property
    def readahead_steps(self) -> int:
        return self.shards.readahead_steps

    def spans(self, indices: np.ndarray) -> list[remote.Span]:
        """(shard, start, end) of the windows `indices`."""
        keys = splitmix64(splitmix64(np.uint64(self.seed)) ^ np.asarray(indices).astype(np.uint64))
        flat = (keys % np.uint64(self.cum_starts[-1])).astype(np.int64)
        shard_ids = np.searchsorted(self.cum_starts, flat, side="right")
        offsets = flat - np.concatenate([[0], self.cum_starts[:-1]])[shard_ids]
        return [(int(s), int(o), int(o) + self.window) for s, o in zip(shard_ids, offsets)]

    def windows(self, indices: np.ndarray) -> np.ndarray:
        """int32 [len(indices), window]."""
        if len(indices) == 0:
            return np.zeros((0, self.window), np.int32)
        return np.stack(self.shards.read_many(self.spans(indices))).astype(np.int32)

    rows = windows

    def prefetch(self, indices: np.ndarray) -> None:
        """Starts reading the windows `indices` (remote shards), to be asked for by a later step."""
        self.shards.prefetch(self.spans(indices))


def _steps_ahead(step: int, depth: int, queued: int) -> range:
    """The steps after `step`, at most `depth` ahead, after `queued` (the last step already read ahead)."""
    return range(max(step, queued) + 1, step + depth + 1)


class _StepBatches:
    """grain map function: step -> this process's rows [local_batch, window] of that step's global batch; it then
    reads ahead this process's rows of the next steps (remote shards)."""

    def __init__(self, sampler: WindowSampler, global_batch: int, process_index: int, process_count: int):
        self.sampler = sampler
        self.global_batch = global_batch
        self.local_batch = global_batch // process_count
        self.first_row = process_index * self.local_batch
        self.queued = -1

    def _indices(self, step: int) -> np.ndarray:
        rows = np.arange(self.first_row, self.first_row + self.local_batch, dtype=np.int64)
        return np.int64(step) * self.global_batch + rows

    def __call__(self, step: int) -> np.ndarray:
        windows = self.sampler.windows(self._indices(step))
        for ahead in _steps_ahead(int(step), self.sampler.readahead_steps, self.queued):
            self.sampler.prefetch(self._indices(ahead))
            self.queued = ahead
        return windows


def _cumulative_shares(weights: list[float]) -> list[Fraction]:
    """Cumulative normalised weights as exact fractions of the weights' decimal forms (0.7 is 7/10)."""
    exact = [Fraction(repr(float(w))) for w in weights]
    total = sum(exact)
    shares, running = [], Fraction(0)
    for weight in exact:
        running += weight
        shares.append(running / total)
    return shares


def _rows_within(steps: int, global_batch: int, shares: list[Fraction]) -> list[int]:
    """Rows each component has had in the first `steps` steps of a stage with these cumulative shares."""
    upto = [steps * global_batch * share.numerator // share.denominator for share in shares]
    return [upto[0]] + [upto[c] - upto[c - 1] for c in range(1, len(upto))]


def _rows_before(step: int, global_batch: int, schedule: tuple[MixtureStage, ...]) -> list[int]:
    """Rows each component has had in steps [0, step): the sum over the stages begun before `step`."""
    total = [0] * len(schedule[0].weights)
    ends = [stage.start for stage in schedule[1:]] + [step]
    for stage, end in zip(schedule, ends):
        if stage.start >= step:
            break
        within = _rows_within(min(end, step) - stage.start, global_batch, _cumulative_shares(list(stage.weights)))
        total = [a + b for a, b in zip(total, within)]
    return total


def rows_per_component(steps: int, global_batch: int, schedule: tuple[MixtureStage, ...]) -> list[int]:
    """How many of the rows of steps [0, steps) each mixture component gives (eval_batches: its batches as steps)."""
    return _rows_before(steps, global_batch, schedule)


def mixture_rows(step: int, global_batch: int, schedule: tuple[MixtureStage, ...],
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(component, row index within that component) of every row of the global batch of `step`.

    Component c's rows are the next ones of its own stream, as many as keep its share of the stage's rows so far
    within one row of weight_c / sum(weights) of the stage holding `step` (exactly, with weights taken as the
    decimals they print as); with several components the rows are shuffled by a hash of (seed, step).
    """
    before = _rows_before(step, global_batch, schedule)
    after = _rows_before(step + 1, global_batch, schedule)
    components = np.concatenate([np.full(a - b, c, np.int64) for c, (b, a) in enumerate(zip(before, after))])
    indices = np.concatenate([np.arange(b, a, dtype=np.int64) for b, a in zip(before, after)])
    if len(schedule[0].weights) > 1:
        order = shuffled_order(global_batch, seed, step)
        components, indices = components[order], indices[order]
    return components, indices


def _stack(parts: list, order: np.ndarray):
    """Rows gathered per component, put back in batch order (arrays, or dicts of arrays)."""
    if isinstance(parts[0], dict):
        return {key: np.concatenate([p[key] for p in parts])[order] for key in parts[0]}
    return np.concatenate(parts)[order]


class _MixtureStepBatches:
    """grain map function for packed rows and/or mixtures: step -> this process's rows of the global batch; it then
    reads ahead this process's rows of the next steps (remote shards)."""

    def __init__(self, samplers: list, schedule: tuple[MixtureStage, ...], global_batch: int, seed: int,
                 process_index: int, process_count: int):
        self.samplers = samplers
        self.schedule = schedule
        self.global_batch = global_batch
        self.seed = seed
        self.local_batch = global_batch // process_count
        self.first_row = process_index * self.local_batch
        self.queued = -1

    def _mine(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(component, row index within it) of this process's rows of `step`."""
        components, indices = mixture_rows(step, self.global_batch, self.schedule, self.seed)
        mine = slice(self.first_row, self.first_row + self.local_batch)
        return components[mine], indices[mine]

    def __call__(self, step: int):
        components, indices = self._mine(int(step))
        parts, positions = [], []
        for c, sampler in enumerate(self.samplers):
            chosen = np.flatnonzero(components == c)
            if chosen.size:
                parts.append(sampler.rows(indices[chosen]))
                positions.append(chosen)
        rows = _stack(parts, np.argsort(np.concatenate(positions), kind="stable"))
        depth = max(sampler.readahead_steps for sampler in self.samplers)
        for ahead in _steps_ahead(int(step), depth, self.queued):
            components, indices = self._mine(ahead)
            for c, sampler in enumerate(self.samplers):
                sampler.prefetch(indices[components == c])
            self.queued = ahead
        return rows


def _sources(data_dir: str | Path, data) -> list[tuple[Path, float]]:
    """The prepared directories rows come from, with weights: the mixture's, or just `data_dir`."""
    if data is not None and data.mixture:
        from gptjax.data.sources import mixture_entries

        return mixture_entries(data)
    return [(Path(data_dir), 1.0)]


def _sampler(data_dir: Path, split: str, window: int, seed: int, packing: bool, data=None):
    shards = remote.open_split(data_dir, split, data)
    if packing:
        return PackedSampler(DocumentTable(data_dir, split, shards), window, seed)
    return WindowSampler(shards, window, seed)


def _component_seed(seed: int, component: int) -> int:
    return seed if component == 0 else int(splitmix64(np.uint64(seed) ^ np.uint64(component)))


def _batch_fn(data_dir, split: str, window: int, global_batch: int, seed: int, process_index: int,
              process_count: int, data):
    packing = bool(data is not None and data.packing)
    sources = _sources(data_dir, data)
    if len(sources) == 1 and not packing:
        return _StepBatches(_sampler(sources[0][0], split, window, seed, False, data), global_batch, process_index,
                            process_count)
    samplers = [_sampler(path, split, window, _component_seed(seed, c), packing, data)
                for c, (path, _) in enumerate(sources)]
    schedule = (mixture_schedule(data.mixture, data.mixture_stages) if data is not None and data.mixture
                else (MixtureStage(0, (1.0,)),))
    return _MixtureStepBatches(samplers, schedule, global_batch, seed, process_index, process_count)


def _mark_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; a program that never parsed them (pytest, notebooks) must say so."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def train_iterator(data_dir: str | Path, block_size: int, global_batch: int, seed: int, n_steps: int,
                   process_index: int = 0, process_count: int = 1, threads: int = 2, *,
                   data=None) -> grain.DatasetIterator:
    """A grain iterator over steps [0, n_steps); restore a position with `.set_state(saved_state)`.

    `data` (a DataConfig) switches on document packing (`packing`: batches are dicts of tokens, segment_ids and
    positions), mixtures (`mixture`: rows drawn from several prepared dirs by weight) and grain worker processes
    (`workers`). Without it, or with those fields at their defaults, batches are random windows of `data_dir`.
    """
    if global_batch % process_count:
        raise GptjaxError(f"train.batch_size={global_batch} must divide by the {process_count} JAX processes")
    batches = _batch_fn(data_dir, "train", block_size + 1, global_batch, seed, process_index, process_count, data)
    return step_iterator(batches, n_steps, threads, int(getattr(data, "workers", 0) or 0))


def step_iterator(batches, n_steps: int, threads: int = 2, workers: int = 0) -> grain.DatasetIterator:
    """A grain iterator of `batches(step)` for steps [0, n_steps), prefetched by threads (and worker processes)."""
    dataset = grain.MapDataset.range(n_steps).map(batches)
    read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, 2))
    iter_dataset = dataset.to_iter_dataset(read_options)
    if workers > 0:
        _mark_absl_flags_parsed()
        iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(iter_dataset)


def eval_batches(data_dir: str | Path, block_size: int, batch_size: int, n_batches: int, seed: int = 1234,
                 split: str = "val", *, data=None) -> list:
    """A fixed set of validation batches (the same on every call), [batch_size, block_size + 1] each.

    With `data.packing` each batch is a dict of tokens, segment_ids and positions; with `data.mixture` rows come
    from every component's `split` by data.mixture's weights (its later stages do not apply).
    """
    if data is not None and data.mixture_stages:
        data = dataclasses.replace(data, mixture_stages=())
    if data is None or not (data.packing or data.mixture):
        sampler = _sampler(Path(data_dir), split, block_size + 1, seed, False, data)
        rows = sampler.windows(np.arange(n_batches * batch_size, dtype=np.int64))  # remote shards: read at once
        return list(rows.reshape(n_batches, batch_size, block_size + 1))
    batches = _batch_fn(data_dir, split, block_size + 1, batch_size, seed, 0, 1, data)
    return [batches(i) for i in range(n_batches)]
