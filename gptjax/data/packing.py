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
from gptjax.data.remote import LocalShards, RemoteShards, Span, open_split
from gptjax.errors import GptjaxError


def shuffled_order(n: int, seed: int, salt: int) -> np.ndarray:
    """A permutation of range(n) determined by (seed, salt) alone: indices sorted by a hash of each."""
    mask = 0xFFFFFFFFFFFFFFFF
    key = splitmix64(splitmix64(np.uint64(seed & mask)) ^ np.uint64(salt & mask))
    return np.argsort(splitmix64(key ^ np.arange(n, dtype=np.uint64)), kind="stable")


def split_doc_spans(data_dir: str | Path, split: str, lengths: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per shard of a split, the (starts, lengths) of its documents, from the `.idx` files beside the manifest's
    shards (local in a gs:// dataset's view too) and the shards' token counts `lengths`."""
    manifest = store.read_manifest(data_dir)
    spans = []
    for shard, n_tokens in zip(manifest["splits"][split]["shards"], lengths):
        idx = store.index_path(Path(data_dir) / shard["file"])
        if not idx.is_file():
            raise GptjaxError(f"{shard['file']} in {data_dir} has no document index ({idx.name}): the data was "
                              f"prepared by an older gptjax; re-run `gptjax prepare` to use data.packing")
        starts, fp = store.read_doc_index(idx)
        if fp != manifest["tokenizer"]["fingerprint"]:
            raise GptjaxError(f"{idx} was written with another tokenizer than {store.MANIFEST} names; "
                              f"re-run `gptjax prepare`")
        spans.append(store.doc_spans(starts, n_tokens))
    return spans


Piece = tuple[int, int, int]  # (document, begin, end): tokens [begin, end) of a document, `length` its <|endoftext|>


class DocumentTable:
    """Every document of one split of a prepared directory: its shard, start offset and length.

    Tokens are read through `shards` (`remote.open_split`'s local or remote shards), which pickle without their maps
    or caches, so the table can go to grain workers.
    """

    def __init__(self, data_dir: str | Path, split: str, shards: LocalShards | RemoteShards | None = None):
        self.shards = shards if shards is not None else open_split(data_dir, split)
        spans = split_doc_spans(data_dir, split, self.shards.lengths)
        self.doc_shard = np.concatenate([np.full(len(s), i, np.int32) for i, (s, _) in enumerate(spans)] or
                                        [np.zeros(0, np.int32)])
        self.doc_start = np.concatenate([s for s, _ in spans] or [np.zeros(0, np.int64)])
        self.doc_length = np.concatenate([n for _, n in spans] or [np.zeros(0, np.int64)])
        self.eot_id = int(store.read_manifest(data_dir)["tokenizer"]["eot_id"])
        if self.doc_length.size == 0:
            raise GptjaxError(f"{data_dir}: the '{split}' split holds no documents to pack")

    def __len__(self) -> int:
        return int(self.doc_length.size)

    def _span(self, piece: Piece) -> Span:
        """Where a piece's document tokens lie in its shard (its <|endoftext|> is not stored there)."""
        doc, begin, end = piece
        start = int(self.doc_start[doc])
        return int(self.doc_shard[doc]), start + begin, start + min(end, int(self.doc_length[doc]))

    def read(self, pieces: list[Piece]) -> list[np.ndarray]:
        """The int32 tokens of each piece, the <|endoftext|> appended where a piece reaches it."""
        bodies = self.shards.read_many([self._span(piece) for piece in pieces])
        return [np.append(body.astype(np.int32), np.int32(self.eot_id)) if end > int(self.doc_length[doc])
                else body.astype(np.int32) for (doc, _, end), body in zip(pieces, bodies)]

    def prefetch(self, pieces: list[Piece]) -> None:
        self.shards.prefetch([self._span(piece) for piece in pieces])


def _packed_row(texts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, segment_ids, positions) of a row made of these document pieces, in order."""
    sizes = [len(text) for text in texts]
    segments = np.repeat(np.arange(1, len(texts) + 1, dtype=np.int32), sizes)
    positions = np.concatenate([np.arange(size, dtype=np.int32) for size in sizes])
    return np.concatenate(texts), segments, positions


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

    @property
    def readahead_steps(self) -> int:
        return self.table.shards.readahead_steps

    def epoch(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """(document order, cumulative stream end of each document in that order) of one epoch."""
        if number not in self._epochs:
            order = shuffled_order(len(self.table), self.seed, number)
            ends = np.cumsum(self.table.doc_length[order] + 1)
            self._epochs = {k: v for k, v in self._epochs.items() if k == number - 1}
            self._epochs[number] = (order, ends)
        return self._epochs[number]

    def pieces(self, index: int) -> list[Piece]:
        """The document pieces row `index` is made of, in order: stream tokens [index * W, (index + 1) * W)."""
        pieces = []
        stream = index * self.window
        filled = 0
        while filled < self.window:
            epoch, offset = divmod(stream, self.epoch_tokens)
            order, ends = self.epoch(epoch)
            rank = int(np.searchsorted(ends, offset, side="right"))
            begin = offset - (int(ends[rank - 1]) if rank else 0)
            doc = int(order[rank])
            take = min(int(self.table.doc_length[doc]) + 1 - begin, self.window - filled)
            pieces.append((doc, begin, begin + take))
            filled += take
            stream += take
        return pieces

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """{"tokens", "segment_ids", "positions"}, each int32 [len(indices), window]."""
        layouts = [self.pieces(int(i)) for i in indices]
        texts = iter(self.table.read([piece for layout in layouts for piece in layout]))
        built = [_packed_row([next(texts) for _ in layout]) for layout in layouts]
        empty = np.zeros((0, self.window), np.int32)
        return {name: np.stack([b[k] for b in built]) if built else empty
                for k, name in enumerate(("tokens", "segment_ids", "positions"))}

    def prefetch(self, indices: np.ndarray) -> None:
        """Starts reading the rows `indices` (remote shards), to be asked for by a later step."""
        self.table.prefetch([piece for i in indices for piece in self.pieces(int(i))])
