"""Self-describing binary token files, written atomically.

Layout: a 64-byte little-endian header, then the tokens.
  magic b"GPTJAXTK" | version u32 | itemsize u32 (2 = uint16, 4 = uint32) | n_tokens u64 |
  tokenizer fingerprint (32 raw sha256 bytes) | 8 reserved bytes
A prepared dataset is a directory of such shards plus `manifest.json` naming them per split. Beside each shard
`NAME.bin` lies its document index `NAME.idx`: the same header with magic b"GPTJAXDX" and itemsize 8, then one
uint64 start offset per document. Inside a shard documents are separated by one `<|endoftext|>` token, so
document k spans [start_k, start_{k+1} - 1) and the last one ends at the shard's end.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from gptjax.errors import GptjaxError
from gptjax.fileio import fsync_dir, read_json, temp_path

MAGIC = b"GPTJAXTK"
INDEX_MAGIC = b"GPTJAXDX"
VERSION = 1
HEADER = struct.Struct("<8sIIQ32s8x")
HEADER_BYTES = 64
assert HEADER.size == HEADER_BYTES


@dataclasses.dataclass(frozen=True)
class TokenFileHeader:
    version: int
    itemsize: int
    n_tokens: int
    tokenizer_fingerprint: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.itemsize == 2 else np.uint32)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def write_tokens(path: str | Path, tokens: np.ndarray, tokenizer_fingerprint: str) -> None:
    """Writes tokens (uint16 or uint32) with a header; the file appears under its name only when complete."""
    tokens = np.ascontiguousarray(tokens)
    if tokens.dtype not in (np.uint16, np.uint32):
        raise ValueError(f"tokens must be uint16 or uint32, got {tokens.dtype}")
    with TokenFileWriter(path, tokens.dtype, tokenizer_fingerprint) as writer:
        writer.append(tokens)


class TokenFileWriter:
    """Streams tokens into a token file without holding them all; the file appears only on a clean `close()`.

    Use as a context manager: leaving the block by an exception deletes the partial temp file.
    """

    def __init__(self, path: str | Path, dtype: np.dtype, tokenizer_fingerprint: str, magic: bytes = MAGIC):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.uint16, np.uint32, np.uint64):
            raise ValueError(f"token files hold uint16, uint32 or uint64, got {self.dtype}")
        self.fingerprint = bytes.fromhex(tokenizer_fingerprint)
        self.magic = magic
        self.n_items = 0
        self._tmp = temp_path(self.path)
        self._file = open(self._tmp, "wb")
        self._file.write(b"\0" * HEADER_BYTES)

    def append(self, items: np.ndarray) -> None:
        items = np.ascontiguousarray(items, dtype=self.dtype)
        self._file.write(items.tobytes())
        self.n_items += items.size

    def close(self) -> None:
        """Writes the header, syncs and renames the temp file into place."""
        self._file.seek(0)
        self._file.write(HEADER.pack(self.magic, VERSION, self.dtype.itemsize, self.n_items, self.fingerprint))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "TokenFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _read_file_header(path: Path, magic: bytes, itemsizes: tuple[int, ...], what: str) -> TokenFileHeader:
    if not path.is_file():
        raise GptjaxError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES or raw[:8] != magic:
        raise GptjaxError(f"{path} is not a gptjax {what} (bad magic); re-run `gptjax prepare`")
    _, version, itemsize, n_items, fp = HEADER.unpack(raw)
    if version != VERSION or itemsize not in itemsizes:
        raise GptjaxError(f"{path}: unsupported {what} version {version} / itemsize {itemsize}")
    expected = HEADER_BYTES + n_items * itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise GptjaxError(f"{path} is truncated or corrupt: {actual} bytes, header says {expected}; "
                          f"re-run `gptjax prepare`")
    return TokenFileHeader(version, itemsize, n_items, fp.hex())


def read_header(path: str | Path) -> TokenFileHeader:
    """The checked header of a token file (magic, version, itemsize, and a size matching n_tokens)."""
    return _read_file_header(Path(path), MAGIC, (2, 4), "token file")


def read_tokens(path: str | Path) -> np.ndarray:
    """Memory-maps a token file's tokens (read-only)."""
    header = read_header(path)
    return np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=(header.n_tokens,))


def write_doc_index(path: str | Path, doc_starts: np.ndarray, tokenizer_fingerprint: str) -> None:
    """Writes a shard's document start offsets (uint64), atomically."""
    with TokenFileWriter(path, np.uint64, tokenizer_fingerprint, magic=INDEX_MAGIC) as writer:
        writer.append(np.asarray(doc_starts, dtype=np.uint64))


def read_doc_index(path: str | Path) -> tuple[np.ndarray, str]:
    """A shard's document start offsets (int64) and the tokenizer fingerprint its header names."""
    header = _read_file_header(Path(path), INDEX_MAGIC, (8,), "document index")
    starts = np.fromfile(path, dtype=np.uint64, offset=HEADER_BYTES, count=header.n_tokens).astype(np.int64)
    return starts, header.tokenizer_fingerprint


def index_path(shard_path: str | Path) -> Path:
    """Where a token shard's document index lives."""
    return Path(shard_path).with_suffix(".idx")


def doc_spans(doc_starts: np.ndarray, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of a shard's documents from their start offsets (one separator token between docs)."""
    starts = np.asarray(doc_starts, dtype=np.int64)
    ends = np.append(starts[1:] - 1, n_tokens) if starts.size else starts
    return starts, ends - starts


MANIFEST = "manifest.json"
_MANIFEST_TOKENIZER_KEYS = ("kind", "fingerprint", "vocab_size", "eot_id")


IDENTITY_KEYS = ("format_version", "tokenizer", "settings", "splits", "stages")  # not where or how fast it ran


def manifest_identity(manifest: dict) -> str:
    """A digest of what a prepared directory holds (tokenizer, settings, shards and their sizes, what each stage
    kept), the same wherever and whenever the same data was prepared; a run checks it on resume."""
    held = {key: manifest.get(key) for key in IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(held, sort_keys=True).encode()).hexdigest()


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise GptjaxError(f"{data_dir} holds no prepared data (no {MANIFEST}); "
                          f"run `gptjax prepare --out {data_dir} ...`")
    fix = f"re-run `gptjax prepare --out {data_dir} ...` to rebuild it"
    manifest = read_json(path, "manifest", fix)
    tokenizer = manifest.get("tokenizer") if isinstance(manifest, dict) else None
    if not isinstance(tokenizer, dict) or not isinstance(manifest.get("splits"), dict) or any(
            key not in tokenizer for key in _MANIFEST_TOKENIZER_KEYS):
        raise GptjaxError(f"manifest {path} lacks its splits or tokenizer ({', '.join(_MANIFEST_TOKENIZER_KEYS)}); "
                          f"{fix}")
    return manifest


def split_shards(data_dir: str | Path, split: str) -> list[Path]:
    """The token files of one split, checked against the manifest's tokenizer fingerprint."""
    manifest = read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise GptjaxError(f"{data_dir}: no '{split}' split in {MANIFEST}")
    paths = [Path(data_dir) / s["file"] for s in manifest["splits"][split]["shards"]]
    for p in paths:
        if read_header(p).tokenizer_fingerprint != manifest["tokenizer"]["fingerprint"]:
            raise GptjaxError(f"{p} was written with another tokenizer than {MANIFEST} names; re-run `gptjax prepare`")
    return paths


def split_doc_spans(data_dir: str | Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per shard of a split, the (starts, lengths) of its documents; needs the shards' `.idx` files."""
    manifest = read_manifest(data_dir)
    spans = []
    for path in split_shards(data_dir, split):
        idx = index_path(path)
        if not idx.is_file():
            raise GptjaxError(f"{path} has no document index ({idx.name}): the data was prepared by an older gptjax; "
                              f"re-run `gptjax prepare` to use data.packing")
        starts, fp = read_doc_index(idx)
        if fp != manifest["tokenizer"]["fingerprint"]:
            raise GptjaxError(f"{idx} was written with another tokenizer than {MANIFEST} names; "
                              f"re-run `gptjax prepare`")
        spans.append(doc_spans(starts, read_header(path).n_tokens))
    return spans
