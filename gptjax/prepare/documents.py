"""The unit every document-level data stage consumes and produces."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    """One text record read from a corpus.

    ``source`` says where the record came from: ``path`` for a whole file, ``path:LINE`` for a
    record starting on a 1-based line (JSONL lines, text split into paragraphs) and ``path#ROW``
    for a 0-based row of a columnar file. ``doc_id`` is a stable hash of ``source``, so it names
    the record, survives every stage that rewrites ``text`` and is the same in every run.
    """

    text: str
    source: str
    doc_id: str


def stable_id(source: str) -> str:
    """Return the 16-hex-digit id of a record located at ``source`` (same input, same id, any process)."""
    return hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def make_document(text: str, source: str) -> Document:
    """Build a Document whose id is derived from its source location."""
    return Document(text=text, source=source, doc_id=stable_id(source))


def with_text(document: Document, text: str) -> Document:
    """Return a copy of ``document`` holding ``text``; source and id are kept."""
    return dataclasses.replace(document, text=text)


def line_source(path: str, line: int) -> str:
    """Source string of a record that starts on 1-based ``line`` of ``path``."""
    return f"{path}:{line}"


def row_source(path: str, row: int) -> str:
    """Source string of the 0-based ``row`` of a columnar file at ``path``."""
    return f"{path}#{row}"
