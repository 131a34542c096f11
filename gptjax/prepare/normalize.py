"""Text normalization: repair invalid UTF-8, unify line breaks, drop control characters, NFC.

Nothing else is changed: whitespace runs, case, punctuation and blank lines are left as they are.
"""
from __future__ import annotations

import re
import unicodedata

from gptjax.prepare.documents import Document, with_text

REPLACEMENT_CHARACTER = "\ufffd"

_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_BREAK = re.compile("\r\n?")
_KEPT_CONTROLS = frozenset("\n\t")
_LAST_CONTROL_CODEPOINT = 0x9F  # Unicode assigns category Cc only to U+0000..U+001F and U+007F..U+009F
_CONTROL_DELETIONS: dict[int, None] = {
    codepoint: None
    for codepoint in range(_LAST_CONTROL_CODEPOINT + 1)
    if unicodedata.category(chr(codepoint)) == "Cc"
    and chr(codepoint) not in _KEPT_CONTROLS
}


def repair_surrogates(text: str) -> tuple[str, int]:
    """Replace lone surrogates with U+FFFD and count them.

    Lone surrogates are what invalid UTF-8 turns into under ``surrogateescape`` decoding, and what
    JSON escapes such as ``"\\ud800"`` produce; a string holding one cannot be written as UTF-8.
    """
    return _SURROGATE.subn(REPLACEMENT_CHARACTER, text)


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing each invalid byte with U+FFFD; return the text and the bytes replaced."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        return repair_surrogates(data.decode("utf-8", "surrogateescape"))


def remove_control_characters(text: str) -> str:
    """Delete Unicode control characters (category Cc) except newline and tab."""
    return text.translate(_CONTROL_DELETIONS)


def normalize(text: str | bytes) -> tuple[str, int]:
    """Normalize one document's text; return ``(text, n_repairs)``.

    Steps, in order: invalid UTF-8 bytes (for ``bytes`` input) and lone surrogates (for ``str``
    input) become U+FFFD and are counted as repairs; ``\\r\\n`` and lone ``\\r`` become ``\\n`` (so
    old line endings still separate lines once control characters go); control characters other
    than ``\\n`` and ``\\t`` are deleted; the result is put in Unicode NFC.
    """
    if isinstance(text, bytes):
        repaired, n_repairs = decode_utf8(text)
    else:
        repaired, n_repairs = repair_surrogates(text)
    unified = _LINE_BREAK.sub("\n", repaired)
    cleaned = remove_control_characters(unified)
    return unicodedata.normalize("NFC", cleaned), n_repairs


def normalize_document(document: Document) -> tuple[Document, int]:
    """Normalize a Document's text; return the new Document and the number of UTF-8 repairs."""
    text, n_repairs = normalize(document.text)
    return with_text(document, text), n_repairs
