"""Document packing: rows of block_size + 1 tokens cut from a shuffled stream of whole documents.

Each epoch orders all documents of a split by a hash of (seed, epoch, document) and lays them end to end, each
followed by `<|endoftext|>`; row r is tokens [r * W, (r + 1) * W) of that endless stream (W = block_size + 1). A
document that does not fit in the rest of a row continues at the start of the next row. Inside a row every
document piece gets its own segment id (1, 2, ... in row order) and positions counting from 0 at the piece's
first token: a continued document restarts at position 0, because its earlier part lies in another row the model
never attends to (and learned position tables only cover block_size). The `<|endoftext|>` belongs to its
document's segment, so predicting it is trained; no target crosses documents and no row has padding.

Everything is a pure function of (seed, row index), so any step's rows can be rebuilt in any process.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gptjax.data import store
from gptjax.data.hashing import splitmix64
from gptjax.errors import GptjaxError


def shuffled_order(n: int, seed: int, salt: int) -> np.ndarray:
    """A permutation of range(n) determined by (seed, salt) alone: indices sorted by a hash of each."""
    mask = 0xFFFFFFFFFFFFFFFF
    key = splitmix64(splitmix64(np.uint64(seed & mask)) ^ np.uint64(salt & mask))
    return np.argsort(splitmix64(key ^ np.arange(n, dtype=np.uint64)), kind="stable")


class DocumentTable:
    """Every document of one split of a prepared directory: its shard, start offset and length.

    Shards are memory-mapped on first use; pickling drops the maps, so the table can go to grain workers.
    """

    def __init__(self, data_dir: str | Path, split: str):
        self.shard_paths = store.split_shards(data_dir, split)
        spans = store.split_doc_spans(data_dir, split)
        self.doc_shard = np.concatenate([np.full(len(s), i, np.int32) for i, (s, _) in enumerate(spans)] or
                                        [np.zeros(0, np.int32)])
        self.doc_start = np.concatenate([s for s, _ in spans] or [np.zeros(0, np.int64)])
        self.doc_length = np.concatenate([n for _, n in spans] or [np.zeros(0, np.int64)])
        self.eot_id = int(store.read_manifest(data_dir)["tokenizer"]["eot_id"])
        self._shards: list[np.ndarray] | None = None
        if self.doc_length.size == 0:
            raise GptjaxError(f"{data_dir}: the '{split}' split holds no documents to pack")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": None}

    def __len__(self) -> int:
        return int(self.doc_length.size)

    def tokens(self, doc: int, begin: int, end: int) -> np.ndarray:
        """Tokens [begin, end) of document `doc`, where position `length` is its `<|endoftext|>`."""
        if self._shards is None:
            self._shards = [store.read_tokens(p) for p in self.shard_paths]
        length = int(self.doc_length[doc])
        start = int(self.doc_start[doc])
        body = np.asarray(self._shards[self.doc_shard[doc]][start + begin:start + min(end, length)], dtype=np.int32)
        return np.append(body, np.int32(self.eot_id)) if end > length else body


class PackedSampler:
    """Packed rows of `window` tokens (tokens, segment_ids, positions) for any row index; see the module doc."""

    def __init__(self, table: DocumentTable, window: int, seed: int):
        self.table = table
        self.window = window
        self.seed = seed
        self.epoch_tokens = int(table.doc_length.sum() + len(table))
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_epochs": {}}

    def epoch(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """(document order, cumulative stream end of each document in that order) of one epoch."""
        if number not in self._epochs:
            order = shuffled_order(len(self.table), self.seed, number)
            ends = np.cumsum(self.table.doc_length[order] + 1)
            self._epochs = {k: v for k, v in self._epochs.items() if k == number - 1}
            self._epochs[number] = (order, ends)
        return self._epochs[number]

    def row(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, segment_ids, positions) of row `index`, each int32 [window]."""
        tokens = np.empty(self.window, np.int32)
        segments = np.empty(self.window, np.int32)
        positions = np.empty(self.window, np.int32)
        stream = index * self.window
        filled = 0
        segment = 1
        while filled < self.window:
            epoch, offset = divmod(stream, self.epoch_tokens)
            order, ends = self.epoch(epoch)
            rank = int(np.searchsorted(ends, offset, side="right"))
            begin = offset - (int(ends[rank - 1]) if rank else 0)
            doc = int(order[rank])
            take = min(int(self.table.doc_length[doc]) + 1 - begin, self.window - filled)
            tokens[filled:filled + take] = self.table.tokens(doc, begin, begin + take)
            segments[filled:filled + take] = segment
            positions[filled:filled + take] = np.arange(take, dtype=np.int32)
            filled += take
            stream += take
            segment += 1
        return tokens, segments, positions

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """{"tokens", "segment_ids", "positions"}, each int32 [len(indices), window]."""
        built = [self.row(int(i)) for i in indices]
        empty = np.zeros((0, self.window), np.int32)
        return {name: np.stack([b[k] for b in built]) if built else empty
                for k, name in enumerate(("tokens", "segment_ids", "positions"))}
