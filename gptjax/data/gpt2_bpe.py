"""GPT-2's byte-level BPE tokenizer in pure Python, built from a local ``vocab.json`` + ``merges.txt``.

The ids match Hugging Face ``tokenizers``' byte-level BPE (and tiktoken's ``gpt2`` encoding) loaded
from the same files:

* text is split into pre-tokens with GPT-2's regex (``GPT2_PRETOKENIZE_PATTERN``);
* each pre-token's UTF-8 bytes are spelled with GPT-2's printable byte alphabet (``bytes_to_unicode``);
* adjacent symbols are merged greedily, lowest merge rank first, until no ranked pair is left.

Special tokens: ``encode`` treats every character of the input as plain text, so a literal
``<|endoftext|>`` in the text becomes the ordinary pieces ``<|``, ``endoftext``, ``|>`` (tiktoken's
``encode_ordinary``; HF's tokenizer with no added special tokens). ``encode_with_special`` maps each
literal ``<|endoftext|>`` to ``eot_id`` and encodes the text between occurrences on its own (HF with
``<|endoftext|>`` added as a special token; tiktoken with ``allowed_special="all"``).

Text must be encodable as UTF-8: a string holding a lone surrogate raises ``UnicodeEncodeError``.
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from pathlib import Path
from types import MappingProxyType

import regex

from gptjax.errors import GptjaxError

GPT2_PRETOKENIZE_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_TOKEN = "<|endoftext|>"
VOCAB_FILENAME = "vocab.json"
MERGES_FILENAME = "merges.txt"
MERGES_VERSION_PREFIX = "#version"
PIECE_CACHE_SIZE = 1 << 17

_PRETOKENIZER = regex.compile(GPT2_PRETOKENIZE_PATTERN)
_SPECIAL_SPLITTER = regex.compile(f"({regex.escape(EOT_TOKEN)})")


@functools.cache
def bytes_to_unicode() -> Mapping[int, str]:
    """GPT-2's byte -> printable-character table (OpenAI ``encoder.py``), used to spell bytes as vocab keys.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, NBSP, soft hyphen)
    map, in byte order, to U+0100 onwards, so e.g. space is ``Ġ`` and newline is ``Ċ``.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(256 + offset) for offset, b in enumerate(shifted)}
    return MappingProxyType(dict(sorted(table.items())))


@functools.cache
def unicode_to_bytes_table() -> Mapping[str, int]:
    """Inverse of ``bytes_to_unicode``: byte-alphabet character -> byte."""
    return MappingProxyType({char: byte for byte, char in bytes_to_unicode().items()})


def unicode_to_bytes(token: str) -> bytes:
    """The raw bytes spelled by a vocab key written in GPT-2's byte alphabet."""
    decoder = unicode_to_bytes_table()
    try:
        return bytes(decoder[char] for char in token)
    except KeyError as err:
        raise GptjaxError(f"token {token!r} has character {err.args[0]!r} outside GPT-2's byte alphabet") from err


def spell_bytes(piece: str) -> str:
    """A text piece's UTF-8 bytes spelled in GPT-2's byte alphabet (the form vocab keys are written in)."""
    return piece.encode("utf-8").decode("latin-1").translate(bytes_to_unicode())


def pretokenize(text: str) -> list[str]:
    """Split text into GPT-2 pre-tokens; BPE merges never cross their boundaries."""
    return _PRETOKENIZER.findall(text)


def merge_symbols(symbols: Sequence[str], ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Apply BPE to one pre-token: repeatedly merge every occurrence of the lowest-ranked adjacent pair."""
    parts = list(symbols)
    while len(parts) > 1:
        pairs = zip(parts, parts[1:], strict=False)
        best = min(pairs, key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        first, second = best
        merged: list[str] = []
        i = 0
        while i < len(parts):
            if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def read_vocab(path: str | Path) -> dict[str, int]:
    """Load a ``vocab.json`` (token -> id) and check its ids are exactly 0..n-1."""
    path = Path(path)
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise GptjaxError(f"cannot read GPT-2 vocab {path}: {err}") from err
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise GptjaxError(f"{path}: expected a JSON object mapping token strings to integer ids")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise GptjaxError(f"{path}: ids must be exactly 0..{len(vocab) - 1}, each used once")
    return vocab


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """Load a ``merges.txt`` (one ``left right`` pair per line, rank = line order), skipping a ``#version`` header."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise GptjaxError(f"cannot read GPT-2 merges {path}: {err}") from err
    if lines and lines[0].startswith(MERGES_VERSION_PREFIX):
        lines = lines[1:]
    merges: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise GptjaxError(f"{path}: merge line {number} is {line!r}, expected 'left right'")
        merges.append((parts[0], parts[1]))
    return merges


def check_tables(vocab: Mapping[str, int], merges: Sequence[tuple[str, str]]) -> None:
    """Fail loudly unless vocab and merges form a usable GPT-2 byte-level BPE (all bytes present, merges closed)."""
    missing = [char for char in bytes_to_unicode().values() if char not in vocab]
    if missing:
        raise GptjaxError(
            f"vocab lacks {len(missing)} of GPT-2's 256 byte characters (e.g. {missing[:5]!r}); "
            "it does not use GPT-2's bytes_to_unicode convention"
        )
    if EOT_TOKEN not in vocab:
        raise GptjaxError(f"vocab has no {EOT_TOKEN!r} token")
    for rank, (left, right) in enumerate(merges):
        for token in (left, right, left + right):
            if token not in vocab:
                raise GptjaxError(f"merge {rank} ({left!r} {right!r}) uses {token!r}, which is not in the vocab")
    if len(set(merges)) != len(merges):
        raise GptjaxError("merges list a pair more than once")


def vocab_json_bytes(vocab: Mapping[str, int]) -> bytes:
    """Canonical ``vocab.json`` content: one line, ids ascending, ASCII-escaped (OpenAI's ``encoder.json`` layout)."""
    ordered = dict(sorted(vocab.items(), key=lambda item: item[1]))
    return json.dumps(ordered).encode("ascii")


def merges_txt_bytes(merges: Iterable[tuple[str, str]]) -> bytes:
    """Canonical ``merges.txt`` content: ``left right`` per line in rank order, newline-terminated, no header."""
    return "".join(f"{left} {right}\n" for left, right in merges).encode("utf-8")


class GPT2BPETokenizer:
    """GPT-2 byte-level BPE over a given vocab and merge list; ids are exact with HF tokenizers and tiktoken."""

    def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]]) -> None:
        check_tables(vocab, merges)
        self._vocab: dict[str, int] = dict(vocab)
        self._merges: list[tuple[str, str]] = list(merges)
        self._ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(self._merges)}
        id_to_token = sorted(self._vocab, key=self._vocab.__getitem__)
        self._id_to_bytes: list[bytes] = [unicode_to_bytes(token) for token in id_to_token]
        self._encode_piece = functools.lru_cache(maxsize=PIECE_CACHE_SIZE)(self._encode_piece_uncached)

    def __getstate__(self) -> dict[str, object]:
        """Pickle only the tables (the piece cache is rebuilt), so data-loader workers can receive the tokenizer."""
        return {"vocab": self._vocab, "merges": self._merges}

    def __setstate__(self, state: dict[str, object]) -> None:
        """Rebuild from pickled tables."""
        self.__init__(state["vocab"], state["merges"])

    @classmethod
    def from_files(cls, vocab_path: str | Path, merges_path: str | Path) -> GPT2BPETokenizer:
        """Build a tokenizer from a GPT-2 ``vocab.json`` and ``merges.txt`` (with or without ``#version`` header)."""
        return cls(read_vocab(vocab_path), read_merges(merges_path))

    @classmethod
    def load(cls, directory: str | Path) -> GPT2BPETokenizer:
        """Load a tokenizer that ``save`` wrote (or any folder with HF-style ``vocab.json`` + ``merges.txt``)."""
        directory = Path(directory)
        return cls.from_files(directory / VOCAB_FILENAME, directory / MERGES_FILENAME)

    def save(self, directory: str | Path) -> Path:
        """Write ``vocab.json`` and ``merges.txt`` into ``directory`` (created if needed) for ``load`` or HF GPT-2."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / VOCAB_FILENAME).write_bytes(vocab_json_bytes(self._vocab))
        (directory / MERGES_FILENAME).write_bytes(merges_txt_bytes(self._merges))
        return directory

    def fingerprint(self) -> str:
        """sha256 hex identifying the tables whatever file layout they came from.

        Hashes the canonical ``vocab.json`` then ``merges.txt`` bytes (exactly what ``save`` writes), each
        preceded by its length as 8 big-endian bytes.
        """
        digest = hashlib.sha256()
        for blob in (vocab_json_bytes(self._vocab), merges_txt_bytes(self._merges)):
            digest.update(len(blob).to_bytes(8, "big"))
            digest.update(blob)
        return digest.hexdigest()

    @property
    def eot_id(self) -> int:
        """Id of ``<|endoftext|>`` (50256 for GPT-2)."""
        return self._vocab[EOT_TOKEN]

    @property
    def vocab_size(self) -> int:
        """Number of ids, special token included (50257 for GPT-2)."""
        return len(self._vocab)

    def _encode_piece_uncached(self, piece: str) -> tuple[int, ...]:
        """Ids of one pre-token; wrapped in a per-instance LRU cache because words repeat."""
        symbols = merge_symbols(spell_bytes(piece), self._ranks)
        return tuple(self._vocab[symbol] for symbol in symbols)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` read as plain text: a literal ``<|endoftext|>`` is encoded as ordinary characters."""
        return list(chain.from_iterable(map(self._encode_piece, pretokenize(text))))

    def encode_with_special(self, text: str) -> list[int]:
        """Ids of ``text`` where each literal ``<|endoftext|>`` is ``eot_id`` and the spans between are plain text."""
        ids: list[int] = []
        for span in _SPECIAL_SPLITTER.split(text):
            if span == EOT_TOKEN:
                ids.append(self.eot_id)
            elif span:
                ids.extend(self.encode(span))
        return ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """Plain-text ids of each text, in order (shares the piece cache across texts)."""
        return [self.encode(text) for text in texts]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes that ``ids`` spell; raises ``ValueError`` for an id outside ``0..vocab_size-1``."""
        table = self._id_to_bytes
        bad = [i for i in ids if not 0 <= i < len(table)]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside 0..{len(table) - 1}")
        return b"".join([table[i] for i in ids])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 (e.g. a cut multi-byte char) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
