"""grain input pipeline: random windows of block_size + 1 tokens, a pure function of (seed, step, row).

Every batch is determined by its step, so a restored iterator continues exactly; each JAX process builds only
its own rows of the global batch. The grain iterator state goes into every checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import grain
import numpy as np

from gptjax.data import store
from gptjax.errors import GptjaxError

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A fast, well-mixed 64-bit hash (SplitMix64 finaliser), vectorised over uint64."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


class WindowSampler:
    """Uniform random windows over all shards of a split: window k of seed s starts at hash(s, k) mod #starts."""

    def __init__(self, shard_paths: list[Path], window: int, seed: int):
        self.window = window
        self.seed = seed
        self.shards = [store.read_tokens(p) for p in shard_paths]
        starts = np.array([max(len(s) - window + 1, 0) for s in self.shards], dtype=np.int64)
        if starts.sum() == 0:
            longest = max((len(s) for s in self.shards), default=0)
            raise GptjaxError(f"the split has {longest} tokens, fewer than block_size + 1 = {window}; "
                              f"lower model.block_size or add data")
        self.cum_starts = np.cumsum(starts)

    def windows(self, indices: np.ndarray) -> np.ndarray:
        """int32 [len(indices), window]."""
        keys = splitmix64(splitmix64(np.uint64(self.seed)) ^ indices.astype(np.uint64))
        flat = (keys % np.uint64(self.cum_starts[-1])).astype(np.int64)
        shard_ids = np.searchsorted(self.cum_starts, flat, side="right")
        offsets = flat - np.concatenate([[0], self.cum_starts[:-1]])[shard_ids]
        return np.stack([self.shards[s][o:o + self.window] for s, o in zip(shard_ids, offsets)]).astype(np.int32)


class _StepBatches:
    """grain map function: step -> this process's rows [local_batch, window] of that step's global batch."""

    def __init__(self, sampler: WindowSampler, global_batch: int, process_index: int, process_count: int):
        self.sampler = sampler
        self.global_batch = global_batch
        self.local_batch = global_batch // process_count
        self.first_row = process_index * self.local_batch

    def __call__(self, step: int) -> np.ndarray:
        rows = np.arange(self.first_row, self.first_row + self.local_batch, dtype=np.int64)
        return self.sampler.windows(np.int64(step) * self.global_batch + rows)


def train_iterator(data_dir: str | Path, block_size: int, global_batch: int, seed: int, n_steps: int,
                   process_index: int = 0, process_count: int = 1, threads: int = 2) -> grain.DatasetIterator:
    """A grain iterator over steps [0, n_steps); restore a position with `.set_state(saved_state)`."""
    if global_batch % process_count:
        raise GptjaxError(f"train.batch_size={global_batch} must divide by the {process_count} JAX processes")
    sampler = WindowSampler(store.split_shards(data_dir, "train"), block_size + 1, seed)
    batches = _StepBatches(sampler, global_batch, process_index, process_count)
    dataset = grain.MapDataset.range(n_steps).map(batches)
    read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, 2))
    return iter(dataset.to_iter_dataset(read_options))


def eval_batches(data_dir: str | Path, block_size: int, batch_size: int, n_batches: int, seed: int = 1234,
                 split: str = "val") -> list[np.ndarray]:
    """A fixed set of validation windows (the same on every call), [batch_size, block_size + 1] each."""
    sampler = WindowSampler(store.split_shards(data_dir, split), block_size + 1, seed)
    return [sampler.windows(np.arange(i * batch_size, (i + 1) * batch_size, dtype=np.int64)) for i in range(n_batches)]
