"""Token shards read by ranges: memory-mapped local files, or the token shards of a gs:// dataset, never copied whole.

`open_split(data_dir, split, data)` gives the shards of a split as `LocalShards` or, for the view of a gs:// dataset
(`gptjax.data.sources.local_data_dir`: its small files local, `fileio.REMOTE_SOURCE` naming the URL, size and
generation of each token shard left on storage), as `RemoteShards`. Both answer `read_many(spans)` (tokens
[start, stop) of shard i, for many spans at once) and `prefetch(spans)`, so the samplers build identical batches
from either.

`RemoteShards` reads fixed-size blocks of the shard objects by HTTP byte ranges, every read conditional on the
generation the view recorded (`ifGenerationMatch`): a shard rewritten or removed while a run reads it is one
GptjaxError naming it, never a batch mixing old and new tokens. Blocks go through one bounded in-memory LRU cache
per process (`data.remote_cache_gb`); the misses of one call are read concurrently (coroutines on fsspec's IO loop),
and `prefetch` queues the blocks of the next steps' rows (`data.remote_readahead_steps`), read while the current step
trains.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gptjax import fileio
from gptjax.config import DataConfig
from gptjax.data import store
from gptjax.errors import GptjaxError

Span = tuple[int, int, int]  # (shard, first token, end token)
BLOCK_BYTES = 1 << 16  # random windows touch one or two blocks: small blocks keep each read latency-bound
READ_CONCURRENCY = 32  # range reads under way at once per cache
READ_LOG: list[tuple[str, int, int]] | None = None  # set to a list to record every (url, start, stop) read


class LocalShards:
    """A split's local token files, memory-mapped on first use; pickling drops the maps (grain workers reopen)."""

    readahead_steps = 0

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        self.lengths = [store.read_header(p).n_tokens for p in self.paths]
        self._maps: list[np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    def read_many(self, spans: Sequence[Span]) -> list[np.ndarray]:
        """The tokens of each span (views of the maps)."""
        if self._maps is None:
            self._maps = [store.read_tokens(p) for p in self.paths]
        return [self._maps[shard][start:stop] for shard, start, stop in spans]

    def prefetch(self, spans: Iterable[Span]) -> None:
        """Nothing to do: the page cache reads ahead for memory maps."""


@dataclasses.dataclass(frozen=True)
class RemoteObject:
    """One token shard on object storage as the run opened it."""

    url: str
    generation: str
    size: int


def changed_error(obj: RemoteObject) -> GptjaxError:
    return GptjaxError(f"{obj.url} changed while this run reads it (generation {obj.generation} when the run opened "
                       f"its data; it was rewritten or removed since): a dataset must stay unchanged while runs read "
                       f"it; restore it, or write new data under a new path and train on that")


def read_error(obj: RemoteObject, start: int, stop: int, error: Exception) -> GptjaxError:
    what = f"{obj.url} (bytes {start}-{stop})"
    if fileio._is_auth_error(error):
        return GptjaxError(f"no access to {what} ({fileio._short(error)}); the Google Cloud credentials are missing or "
                           f"lack storage permission: run `gcloud auth application-default login` or set "
                           f"GOOGLE_APPLICATION_CREDENTIALS, then run the same command again (it resumes exactly)")
    return GptjaxError(f"cannot read {what} ({fileio._short(error)}); check the network and run the same command "
                       f"again (it resumes exactly)")


async def read_range(fs, path: str, obj: RemoteObject, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of `obj` (at `path` of the gcsfs filesystem `fs`), only from the generation the run opened
    (GCS answers 412 for another)."""
    try:
        headers, data = await fs._call("GET", fs.url(path), headers={"Range": f"bytes={start}-{stop - 1}"},
                                       ifGenerationMatch=obj.generation)
    except (FileExistsError, FileNotFoundError):  # gcsfs's names for 412 (precondition failed) and 404
        raise changed_error(obj) from None
    except Exception as error:  # gcsfs raises aiohttp, google.auth and its own HttpError types
        raise read_error(obj, start, stop, error) from None
    served = headers.get("x-goog-generation")
    if (served is not None and served != obj.generation) or len(data) != stop - start:
        raise changed_error(obj)
    if READ_LOG is not None:
        READ_LOG.append((obj.url, start, stop))
    return data


@dataclasses.dataclass
class CacheStats:
    """The block requests a cache answered: held, read ahead and still arriving, or read on demand."""

    hits: int = 0
    in_flight: int = 0
    misses: int = 0
    reads: int = 0
    bytes_read: int = 0
    peak_bytes: int = 0

    @property
    def requested(self) -> int:
        return self.hits + self.in_flight + self.misses


BlockKey = tuple[RemoteObject, int]


def _places(keys: list[BlockKey]) -> dict[str, tuple]:
    """(gcsfs filesystem, path) of each object of `keys`, looked up before the cache's lock is taken (making a
    filesystem may wait on the IO loop, where reads finishing take that lock)."""
    return {url: fileio._remote_fs(url) for url in {obj.url for obj, _ in keys}}


class BlockCache:
    """Fixed-size blocks of remote objects, least recently used evicted first so that at most `capacity` bytes are
    held; missing blocks are read as coroutines on fsspec's IO loop (at most READ_CONCURRENCY at once, no thread a
    stopping process must wait for), never two reads of one block at once."""

    def __init__(self, capacity: int, block_bytes: int = BLOCK_BYTES):
        self.capacity = capacity
        self.block_bytes = block_bytes
        self.stats = CacheStats()
        self._reads = asyncio.Semaphore(READ_CONCURRENCY)
        self._blocks: collections.OrderedDict[BlockKey, bytes] = collections.OrderedDict()
        self._held = 0
        self._pending: dict[BlockKey, Future] = {}
        self._unclaimed: set[BlockKey] = set()  # read ahead, not asked for yet
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        return self._held

    def get_many(self, keys: Iterable[BlockKey]) -> dict[BlockKey, bytes]:
        """Every block of `keys`, reading the missing ones concurrently; a failed read raises its GptjaxError."""
        keys = list(dict.fromkeys(keys))
        places = _places(keys)
        found, waiting = {}, {}
        with self._lock:
            for key in keys:
                self._unclaimed.discard(key)
                if key in self._blocks:
                    self._blocks.move_to_end(key)
                    found[key] = self._blocks[key]
                    self.stats.hits += 1
                elif key in self._pending:
                    waiting[key] = self._pending[key]
                    self.stats.in_flight += 1
                else:
                    waiting[key] = self._submit(key, places[key[0].url])
                    self.stats.misses += 1
        try:
            for key, future in waiting.items():
                found[key] = future.result()
        except BaseException:
            self._cancel_read_ahead()  # the run is about to stop: no reads nobody waits for
            raise
        return found

    def prefetch(self, keys: Iterable[BlockKey]) -> None:
        """Queues reads of the blocks of `keys` neither held nor being read, while the blocks read ahead and not
        asked for yet fit in half the cache (so read-ahead never evicts itself); held ones count as just used.
        A failed read surfaces when its block is asked for."""
        keys = list(dict.fromkeys(keys))
        places = _places(keys)
        with self._lock:
            for key in keys:
                if key in self._blocks:
                    self._blocks.move_to_end(key)
                elif key not in self._pending:
                    if (len(self._unclaimed) + 1) * self.block_bytes > self.capacity // 2:
                        return
                    self._submit(key, places[key[0].url])
                    self._unclaimed.add(key)

    def _submit(self, key: BlockKey, place: tuple) -> Future:
        fs, path = place
        future = asyncio.run_coroutine_threadsafe(self._load(fs, path, key), fs.loop)
        self._pending[key] = future
        return future

    async def _load(self, fs, path: str, key: BlockKey) -> bytes:
        obj, block = key
        start = block * self.block_bytes
        try:
            async with self._reads:
                data = await read_range(fs, path, obj, start, min(start + self.block_bytes, obj.size))
        except BaseException:
            with self._lock:
                self._pending.pop(key, None)
                self._unclaimed.discard(key)
            raise
        with self._lock:
            self._pending.pop(key, None)
            self.stats.reads += 1
            self.stats.bytes_read += len(data)
            self._blocks[key] = data
            self._held += len(data)
            while self._held > self.capacity:
                evicted, old = self._blocks.popitem(last=False)
                self._held -= len(old)
                self._unclaimed.discard(evicted)
            self.stats.peak_bytes = max(self.stats.peak_bytes, self._held)
        return data

    def _cancel_read_ahead(self) -> None:
        """Cancels the reads that only read-ahead asked for."""
        with self._lock:
            for key in list(self._unclaimed):
                future = self._pending.pop(key, None)
                if future is not None:
                    future.cancel()
            self._unclaimed.clear()

    def close(self) -> None:
        """Cancels every read under way (nobody may wait for one any more)."""
        with self._lock:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            self._unclaimed.clear()


_caches: dict[tuple[int, int], BlockCache] = {}
_caches_lock = threading.Lock()


def shared_cache(capacity: int, block_bytes: int = BLOCK_BYTES) -> BlockCache:
    """This process's block cache of that capacity and block size, shared by every reader of a run."""
    with _caches_lock:
        if (capacity, block_bytes) not in _caches:
            _caches[(capacity, block_bytes)] = BlockCache(capacity, block_bytes)
        return _caches[(capacity, block_bytes)]


def close_caches() -> None:
    """Closes and forgets this process's block caches."""
    with _caches_lock:
        caches = list(_caches.values())
        _caches.clear()
    for cache in caches:
        cache.close()


def _forget_caches_in_child() -> None:
    """A forked process (a grain worker) starts with no caches: the parent's threads do not exist in it."""
    global _caches_lock
    _caches.clear()
    _caches_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_caches_in_child)


def parse_header(raw: bytes, obj: RemoteObject) -> store.TokenFileHeader:
    """The header of a remote token shard from its first bytes, checked as `store.read_header` checks a file's."""
    if len(raw) < store.HEADER_BYTES or raw[:8] != store.MAGIC:
        raise GptjaxError(f"{obj.url} is not a gptjax token file (bad magic); re-run `gptjax prepare`")
    _, version, itemsize, n_tokens, fingerprint = store.HEADER.unpack(raw[:store.HEADER_BYTES])
    if version != store.VERSION or itemsize not in (2, 4):
        raise GptjaxError(f"{obj.url}: unsupported token file version {version} / itemsize {itemsize}")
    expected = store.HEADER_BYTES + n_tokens * itemsize
    if obj.size != expected:
        raise GptjaxError(f"{obj.url} is truncated or corrupt: {obj.size} bytes, header says {expected}; "
                          f"re-run `gptjax prepare`")
    return store.TokenFileHeader(version, itemsize, n_tokens, fingerprint.hex())


class RemoteShards:
    """The token shards of one split of a gs:// dataset, read by byte ranges through the process's block cache.

    Pickles without the cache (a grain worker uses its own)."""

    def __init__(self, objects: Sequence[RemoteObject], cache_bytes: int, readahead_steps: int,
                 block_bytes: int = BLOCK_BYTES):
        self.objects = list(objects)
        self.cache_bytes = cache_bytes
        self.block_bytes = block_bytes
        self.readahead_steps = readahead_steps
        first_blocks = self.cache.get_many((obj, 0) for obj in self.objects)
        self.headers = [parse_header(first_blocks[(obj, 0)], obj) for obj in self.objects]
        self.lengths = [header.n_tokens for header in self.headers]

    @property
    def cache(self) -> BlockCache:
        return shared_cache(self.cache_bytes, self.block_bytes)

    def _byte_range(self, span: Span) -> tuple[RemoteObject, int, int]:
        shard, start, stop = span
        itemsize = self.headers[shard].itemsize
        return self.objects[shard], store.HEADER_BYTES + start * itemsize, store.HEADER_BYTES + stop * itemsize

    def _blocks(self, start: int, stop: int) -> range:
        """The blocks holding bytes [start, stop) of an object."""
        return range(start // self.block_bytes, (stop - 1) // self.block_bytes + 1) if stop > start else range(0)

    def _keys(self, ranges: Iterable[tuple[RemoteObject, int, int]]) -> list[BlockKey]:
        return [(obj, block) for obj, start, stop in ranges for block in self._blocks(start, stop)]

    def read_many(self, spans: Sequence[Span]) -> list[np.ndarray]:
        """The tokens of each span, the blocks missing from the cache read concurrently."""
        ranges = [self._byte_range(span) for span in spans]
        held = self.cache.get_many(self._keys(ranges))
        tokens = []
        for (shard, _, _), (obj, start, stop) in zip(spans, ranges):
            blocks = self._blocks(start, stop)
            joined = b"".join(held[(obj, block)] for block in blocks)
            skip = start - blocks.start * self.block_bytes if blocks else 0
            tokens.append(np.frombuffer(joined[skip:skip + stop - start], self.headers[shard].dtype))
        return tokens

    def prefetch(self, spans: Iterable[Span]) -> None:
        """Queues the reads of the blocks of `spans` (the rows of the steps ahead)."""
        self.cache.prefetch(self._keys(self._byte_range(span) for span in spans))


def remote_source(data_dir: str | Path) -> dict | None:
    """What a gs:// dataset's view left on storage (its URL and shard objects), None for a local directory."""
    path = Path(data_dir) / fileio.REMOTE_SOURCE
    if not path.is_file():
        return None
    return fileio.read_json(path, "remote data source", f"delete {data_dir} (the cache re-creates it)")


def cache_bytes(data: DataConfig) -> int:
    """The block cache of each reading process: data.remote_cache_gb shared by the process and its grain workers."""
    return int(data.remote_cache_gb * 2**30 / (1 + data.workers))


def open_split(data_dir: str | Path, split: str, data: DataConfig | None = None) -> LocalShards | RemoteShards:
    """The token shards of one split of a prepared directory, checked against its manifest's tokenizer."""
    source = remote_source(data_dir)
    if source is None:
        return LocalShards(store.split_shards(data_dir, split))
    data = data or DataConfig()
    manifest = store.read_manifest(data_dir)
    url = source["url"]
    if split not in manifest["splits"]:
        raise GptjaxError(f"{url}: no '{split}' split in {store.MANIFEST}")
    objects = []
    for shard in manifest["splits"][split]["shards"]:
        entry = source["objects"].get(shard["file"])
        if entry is None:
            raise GptjaxError(f"{url}/{shard['file']}, a token shard its {store.MANIFEST} names, does not exist; "
                              f"copy the whole `gptjax prepare` output there (`gcloud storage cp -r`)")
        objects.append(RemoteObject(f"{url}/{shard['file']}", str(entry["generation"]), int(entry["size"])))
    shards = RemoteShards(objects, cache_bytes(data), data.remote_readahead_steps, BLOCK_BYTES)
    for obj, header in zip(objects, shards.headers):
        if header.tokenizer_fingerprint != manifest["tokenizer"]["fingerprint"]:
            raise GptjaxError(f"{obj.url} was written with another tokenizer than {store.MANIFEST} names; re-run "
                              f"`gptjax prepare`")
    return shards


def read_split(data_dir: str | Path, split: str) -> np.ndarray:
    """A split's tokens in order, all of them (local files or remote shards alike)."""
    shards = open_split(data_dir, split)
    parts = shards.read_many([(i, 0, n) for i, n in enumerate(shards.lengths)])
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)
