"""Streaming corpus readers: text, JSONL (plain, gzip, zstd) and Parquet files into Documents.

Readers are generators whose memory is bounded by the largest single record, never by the
corpus. Bad input never stops the stream: it is skipped or repaired and counted in ``ReadStats``.
"""
from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from gptjax.errors import GptjaxError
from gptjax.prepare.documents import Document, line_source, make_document, row_source
from gptjax.prepare.normalize import decode_utf8, repair_surrogates

TxtMode = Literal["file", "blank_lines", "separator"]

TXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES

BINARY_SNIFF_BYTES = 1024
_READ_CHUNK_BYTES = 1 << 20
_ZSTD_MAX_WINDOW_BYTES = 1 << 31
_ZSTD_READ_BYTES = 1 << 16
_GLOB_CHARACTERS = frozenset("*?[")


class InputPathError(GptjaxError, ValueError):
    """An input path that names nothing readable; the message is one line: what, where, what to do."""


class _SkipFile(Exception):
    """Raised inside a file reader to abandon the rest of one file under a counted reason."""

    def __init__(self, reason: str, example: str):
        super().__init__(f"{reason}: {example}")
        self.reason = reason
        self.example = example


@dataclass(frozen=True)
class ReaderConfig:
    """How to turn files into documents.

    ``txt_mode``: ``"file"`` makes each ``.txt`` file one document, ``"blank_lines"`` splits it on
    lines holding only whitespace, ``"separator"`` splits it on the string ``separator``.
    ``text_field`` is the JSONL key and ``text_column`` the Parquet column holding the text.
    A record larger than ``max_record_bytes`` is skipped and counted instead of being loaded (the
    size is in decoded characters for separator-split text and Parquet strings, in bytes elsewhere).
    """

    txt_mode: TxtMode = "file"
    separator: str | None = None
    text_field: str = "text"
    text_column: str = "text"
    max_record_bytes: int = 1 << 30
    parquet_batch_rows: int = 1024
    max_examples_per_reason: int = 3

    def __post_init__(self) -> None:
        if self.txt_mode not in ("file", "blank_lines", "separator"):
            raise GptjaxError(f"reader settings: txt_mode={self.txt_mode!r} is not one of file, blank_lines, separator")
        if self.txt_mode == "separator" and not self.separator:
            raise GptjaxError("reader settings: txt_mode='separator' needs a non-empty separator string")
        if self.max_record_bytes < 1 or self.parquet_batch_rows < 1:
            raise GptjaxError("reader settings: max_record_bytes and parquet_batch_rows must be positive")


@dataclass
class ReadStats:
    """What a read produced and skipped: counts by reason plus a few ``file:line`` examples per reason.

    Reasons: ``files``, ``documents``, ``invalid_utf8_bytes`` (bytes replaced by U+FFFD),
    ``invalid_utf8_records`` (records, or lines in ``blank_lines`` mode, holding such bytes),
    ``lone_surrogates`` (JSON ``\\udXXX`` escapes made U+FFFD),
    ``binary_file``, ``empty_file``, ``empty_document``, ``blank_line``,
    ``invalid_json``, ``not_a_json_object``, ``missing_text_field``, ``non_string_text``,
    ``null_text``, ``missing_text_column``, ``record_too_long``, ``corrupt_file``,
    ``unsupported_file``.
    """

    max_examples_per_reason: int = 3
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str | None = None, count: int = 1) -> None:
        """Count ``count`` occurrences of ``reason``, remembering ``example`` while there is room."""
        self.counts[reason] += count
        if example is not None:
            kept = self.examples.setdefault(reason, [])
            if len(kept) < self.max_examples_per_reason:
                kept.append(example)

    def __getitem__(self, reason: str) -> int:
        return self.counts[reason]

    def summary(self) -> str:
        """One line per reason with its count and examples, for logs."""
        lines = []
        for reason, count in sorted(self.counts.items()):
            examples = self.examples.get(reason)
            lines.append(f"{reason}: {count}" + (f" (e.g. {', '.join(examples)})" if examples else ""))
        return "\n".join(lines)


def has_supported_suffix(path: Path) -> bool:
    """True if ``path`` ends in a suffix that some reader handles."""
    return path.name.lower().endswith(SUPPORTED_SUFFIXES)


def _missing_path_error(spec: str, kind: str) -> InputPathError:
    return InputPathError(
        f"input {kind} {spec!r} (resolved to {os.path.abspath(spec)}) matches no file; "
        f"pass an existing file, folder or glob with files ending in {', '.join(SUPPORTED_SUFFIXES)}"
    )


def _expand_folder(folder: Path, unsupported: set[Path]) -> list[Path]:
    """Supported files under ``folder`` (recursively); the other files are added to ``unsupported``."""
    found = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if has_supported_suffix(path):
            found.append(path)
        else:
            unsupported.add(path)
    return found


def resolve_inputs(
    inputs: str | os.PathLike | Iterable[str | os.PathLike], stats: ReadStats | None = None
) -> list[Path]:
    """Expand files, folders (recursively), glob patterns and Hugging Face datasets (`hf://datasets/ORG/NAME[/PATH]`)
    into a sorted, de-duplicated file list.

    Raises InputPathError for an input that does not exist, a glob or folder with no readable
    file, or a named file with an unsupported suffix.
    """
    stats = stats if stats is not None else ReadStats()
    specs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not specs:
        raise InputPathError("no input paths given; pass at least one file, folder or glob")
    files: set[Path] = set()
    unsupported: set[Path] = set()
    for spec in map(os.fspath, specs):
        path = Path(spec)
        if spec.startswith("hf://"):
            found = _hub_dataset_files(spec, unsupported)
        elif path.is_dir():
            found = _expand_folder(path, unsupported)
            if not found:
                raise _missing_path_error(spec, "folder")
        elif path.is_file():
            if not has_supported_suffix(path):
                raise InputPathError(
                    f"input file {spec!r} has an unsupported suffix; rename it or convert it to one of "
                    f"{', '.join(SUPPORTED_SUFFIXES)}"
                )
            found = [path]
        elif _GLOB_CHARACTERS & set(spec):
            found = []
            for match in map(Path, glob.glob(spec, recursive=True)):
                if match.is_dir():
                    found.extend(_expand_folder(match, unsupported))
                elif has_supported_suffix(match):
                    found.append(match)
            if not found:
                raise _missing_path_error(spec, "glob")
        else:
            raise InputPathError(
                f"input path {spec!r} does not exist (resolved to {os.path.abspath(spec)}); "
                "check the spelling or pass an existing file, folder or glob"
            )
        files.update(found)
    for path in sorted(unsupported, key=str):
        stats.add("unsupported_file", str(path))
    return sorted(files, key=str)


def _hub_dataset_files(spec: str, unsupported: set) -> list:
    """The supported files of a Hub dataset `hf://datasets/ORG/NAME[@REVISION][/PATH]`, each downloaded only when
    the reader opens it (gptjax.hub.HubFile)."""
    from gptjax import hub

    if not spec.startswith(hub.DATASET_SCHEME):
        raise InputPathError(f"input {spec!r}: a Hub input is hf://datasets/ORG/NAME[@REVISION][/PATH]")
    listed = hub.dataset_files(spec)
    found = [file for file in listed if has_supported_suffix(Path(file.name))]
    unsupported.update(file for file in listed if not has_supported_suffix(Path(file.name)))
    if not found:
        raise InputPathError(f"input {spec!r} holds no {', '.join(SUPPORTED_SUFFIXES)} file "
                             f"({len(listed)} files listed); check the path inside the dataset")
    return found


class TruncatedStreamError(EOFError):
    """A compressed stream that ends in the middle of a frame."""


class _ZstdFrames(io.RawIOBase):
    """Decompressed bytes of every zstd frame in ``raw``, raising TruncatedStreamError on a cut-off frame.

    (``zstandard``'s own stream reader returns a silent short read for a truncated file.)
    """

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self._raw = raw
        self._decompressor = None
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _decompress(self, compressed: bytes) -> bytes:
        import zstandard

        outputs = []
        while compressed:
            if self._decompressor is None:
                self._decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW_BYTES).decompressobj()
            outputs.append(self._decompressor.decompress(compressed))
            if not self._decompressor.eof:
                break
            compressed = self._decompressor.unused_data
            self._decompressor = None
        return b"".join(outputs)

    def readinto(self, buffer) -> int:
        while not self._pending:
            compressed = self._raw.read(_ZSTD_READ_BYTES)
            if not compressed:
                if self._decompressor is not None:
                    raise TruncatedStreamError("zstd stream ends inside a frame (file truncated?)")
                return 0
            self._pending = memoryview(self._decompress(compressed))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


@contextmanager
def _open_binary(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for reading as a buffered byte stream, decompressing ``.gz`` and ``.zst``."""
    name = path.name.lower()
    if name.endswith(".gz"):
        with gzip.open(path, "rb") as stream:
            yield stream
    elif name.endswith(".zst"):
        with open(path, "rb") as raw:
            yield io.BufferedReader(_ZstdFrames(raw), buffer_size=_READ_CHUNK_BYTES)
    else:
        with open(path, "rb", buffering=_READ_CHUNK_BYTES) as stream:
            yield stream


def _read_head(path: Path) -> bytes:
    with _open_binary(path) as stream:
        return stream.read(BINARY_SNIFF_BYTES)


def _iter_lines(stream: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(line_number, line)`` with the newline kept; ``line`` is None when it exceeds ``max_bytes``.

    A line is read in chunks, so one that is too long is drained without ever being held whole.
    """
    line_number = 0
    while True:
        piece = stream.readline(_READ_CHUNK_BYTES)
        if not piece:
            return
        line_number += 1
        if piece.endswith(b"\n") and len(piece) <= max_bytes:
            yield line_number, piece
            continue
        pieces = [piece]
        size = len(piece)
        while not piece.endswith(b"\n"):
            piece = stream.readline(_READ_CHUNK_BYTES)
            if not piece:
                break
            size += len(piece)
            if size <= max_bytes:
                pieces.append(piece)
            else:
                pieces.clear()
        if size > max_bytes:
            yield line_number, None
            continue
        if len(pieces) > 1:
            pieces[:] = [b"".join(pieces)]
        yield line_number, pieces.pop()


def _decode_counted(data: bytes, where: str, stats: ReadStats) -> str:
    text, n_invalid = decode_utf8(data)
    if n_invalid:
        stats.add("invalid_utf8_bytes", where, n_invalid)
        stats.add("invalid_utf8_records", where)
    return text


def _emit(text: str, source: str, stats: ReadStats) -> Iterator[Document]:
    if text.strip():
        stats.add("documents")
        yield make_document(text, source)
    else:
        stats.add("empty_document", source)


def _read_txt_whole(path: Path, config: ReaderConfig, stats: ReadStats) -> Iterator[Document]:
    size = path.stat().st_size
    if size > config.max_record_bytes:
        stats.add("record_too_long", f"{path} ({size} bytes)")
        return
    text = _decode_counted(path.read_bytes(), str(path), stats)
    yield from _emit(text, str(path), stats)


def _read_txt_blank_lines(path: Path, config: ReaderConfig, stats: ReadStats) -> Iterator[Document]:
    paragraph: list[str] = []
    paragraph_bytes = 0
    start_line = 0
    too_long = False

    def flush() -> Iterator[Document]:
        where = line_source(str(path), start_line)
        if too_long:
            stats.add("record_too_long", where)
        elif paragraph:
            yield from _emit("".join(paragraph).rstrip("\n"), where, stats)

    with _open_binary(path) as stream:
        for line_number, raw_line in _iter_lines(stream, config.max_record_bytes):
            if raw_line is not None and not raw_line.strip():
                yield from flush()
                paragraph, paragraph_bytes, too_long = [], 0, False
                continue
            if not paragraph and not too_long:
                start_line = line_number
            if too_long:
                continue
            if raw_line is None or paragraph_bytes + len(raw_line) > config.max_record_bytes:
                paragraph, too_long = [], True
                continue
            paragraph_bytes += len(raw_line)
            paragraph.append(_decode_counted(raw_line, line_source(str(path), line_number), stats))
        yield from flush()


def _read_txt_separator(path: Path, config: ReaderConfig, stats: ReadStats) -> Iterator[Document]:
    separator = config.separator or ""
    overlap = len(separator) - 1
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    pending: list[str] = []
    pending_chars = 0
    carry = ""
    record_line = 1
    record_newlines = 0
    too_long = False

    def finish_record(last_piece: str) -> Iterator[Document]:
        where = line_source(str(path), record_line)
        if too_long:
            stats.add("record_too_long", where)
            return
        text, n_invalid = repair_surrogates("".join(pending) + last_piece)
        if n_invalid:
            stats.add("invalid_utf8_bytes", where, n_invalid)
            stats.add("invalid_utf8_records", where)
        yield from _emit(text, where, stats)

    with _open_binary(path) as stream:
        while True:
            chunk = stream.read(_READ_CHUNK_BYTES)
            text = carry + decoder.decode(chunk, final=not chunk)
            position = 0
            while (cut := text.find(separator, position)) >= 0:
                piece = text[position:cut]
                yield from finish_record(piece)
                record_line += record_newlines + piece.count("\n") + separator.count("\n")
                pending, pending_chars, record_newlines, too_long = [], 0, 0, False
                position = cut + len(separator)
            if not chunk:
                carry = text[position:]
                break
            settled_end = max(position, len(text) - overlap)
            settled = text[position:settled_end]
            carry = text[settled_end:]
            record_newlines += settled.count("\n")
            pending_chars += len(settled)
            if pending_chars > config.max_record_bytes:
                pending, too_long = [], True
            elif settled:
                pending.append(settled)
        if carry or pending or too_long:
            yield from finish_record(carry)


def _read_jsonl(path: Path, config: ReaderConfig, stats: ReadStats) -> Iterator[Document]:
    with _open_binary(path) as stream:
        for line_number, raw_line in _iter_lines(stream, config.max_record_bytes):
            where = line_source(str(path), line_number)
            if raw_line is None:
                stats.add("record_too_long", where)
                continue
            if not raw_line.strip():
                stats.add("blank_line", where)
                continue
            line = _decode_counted(raw_line, where, stats)
            raw_line = None
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as error:
                stats.add("invalid_json", f"{where} ({type(error).__name__}: {str(error)[:80]})")
                continue
            finally:
                line = ""
            if not isinstance(record, dict):
                stats.add("not_a_json_object", where)
                continue
            if config.text_field not in record:
                stats.add("missing_text_field", where)
                continue
            text = record[config.text_field]
            if text is None:
                stats.add("null_text", where)
                continue
            if not isinstance(text, str):
                stats.add("non_string_text", f"{where} ({type(text).__name__})")
                continue
            text, n_surrogates = repair_surrogates(text)
            if n_surrogates:
                stats.add("lone_surrogates", where, n_surrogates)
            yield from _emit(text, where, stats)


def _read_parquet(path: Path, config: ReaderConfig, stats: ReadStats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if config.text_column not in parquet.schema_arrow.names:
        raise _SkipFile("missing_text_column", f"{path} (columns: {', '.join(parquet.schema_arrow.names)})")
    if parquet.metadata.num_rows == 0:
        stats.add("empty_file", str(path))
        return
    row = 0
    for batch in parquet.iter_batches(batch_size=config.parquet_batch_rows, columns=[config.text_column]):
        for value in batch.column(0).to_pylist():
            where = row_source(str(path), row)
            row += 1
            if value is None:
                stats.add("null_text", where)
            elif isinstance(value, bytes):
                yield from _emit(_decode_counted(value, where, stats), where, stats)
            elif isinstance(value, str):
                if len(value) > config.max_record_bytes:
                    stats.add("record_too_long", where)
                else:
                    yield from _emit(value, where, stats)
            else:
                stats.add("non_string_text", f"{where} ({type(value).__name__})")


_TXT_READERS = {"file": _read_txt_whole, "blank_lines": _read_txt_blank_lines, "separator": _read_txt_separator}
_STREAM_ERRORS = (OSError, EOFError, zlib.error)


def _zstd_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard
    except ImportError:
        return ()
    return (zstandard.ZstdError,)


def _pyarrow_errors() -> tuple[type[BaseException], ...]:
    try:
        import pyarrow
    except ImportError:
        return ()
    return (pyarrow.ArrowException,)


def read_file(path: Path, config: ReaderConfig, stats: ReadStats) -> Iterator[Document]:
    """Stream the documents of one file, counting everything skipped or repaired in ``stats``."""
    stats.add("files")
    name = path.name.lower()
    recoverable = _STREAM_ERRORS + _zstd_errors() + _pyarrow_errors()
    try:
        if path.stat().st_size == 0:
            stats.add("empty_file", str(path))
            return
        if name.endswith(PARQUET_SUFFIXES):
            yield from _read_parquet(path, config, stats)
            return
        head = _read_head(path)
        if not head:
            stats.add("empty_file", str(path))
            return
        if b"\x00" in head:
            stats.add("binary_file", str(path))
            return
        if name.endswith(JSONL_SUFFIXES):
            yield from _read_jsonl(path, config, stats)
        else:
            yield from _TXT_READERS[config.txt_mode](path, config, stats)
    except _SkipFile as skip:
        stats.add(skip.reason, skip.example)
    except recoverable as error:
        stats.add("corrupt_file", f"{path} ({type(error).__name__}: {error})")


def read_documents(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    config: ReaderConfig = ReaderConfig(),
    stats: ReadStats | None = None,
) -> Iterator[Document]:
    """Stream Documents from files, folders (recursive) and globs, file by file in sorted path order.

    Inputs are resolved before the first document is produced, so a missing path raises
    InputPathError (a ValueError) at the call, not midway through a run. Pass a ``ReadStats`` to
    learn what was skipped or repaired.
    """
    stats = stats if stats is not None else ReadStats(config.max_examples_per_reason)
    files = resolve_inputs(inputs, stats)

    def stream() -> Iterator[Document]:
        for path in files:
            yield from read_file(path, config, stats)

    return stream()
