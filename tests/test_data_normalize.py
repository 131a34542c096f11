"""Tests for gptjax.prepare.normalize: UTF-8 repair, line breaks, control characters, NFC."""
import json
import unicodedata

import pytest

from gptjax.prepare.documents import make_document
from gptjax.prepare.normalize import (
    decode_utf8,
    normalize,
    normalize_document,
    remove_control_characters,
    repair_surrogates,
)


def test_clean_text_is_unchanged_and_needs_no_repair():
    text = "Plain text,\twith a tab\n\nand  two  spaces, café, 東京.\n"
    assert normalize(text) == (text, 0)


def test_nfc_composes_decomposed_characters():
    decomposed = "cafe\u0301 A\u030a"
    text, repairs = normalize(decomposed)
    assert text == "café Å"
    assert unicodedata.is_normalized("NFC", text)
    assert repairs == 0


def test_control_characters_removed_but_newline_and_tab_kept():
    text, repairs = normalize("a\x00b\x07c\x1bd\x7fe\x85f\x9fg\th\ni")
    assert text == "abcdefg\th\ni"
    assert repairs == 0


def test_format_characters_are_not_control_characters():
    zero_width_joiner_emoji = "👩\u200d💻"
    assert remove_control_characters(zero_width_joiner_emoji) == zero_width_joiner_emoji


def test_windows_and_old_mac_line_breaks_become_newlines():
    assert normalize("one\r\ntwo\rthree\n")[0] == "one\ntwo\nthree\n"


def test_invalid_utf8_bytes_are_replaced_and_counted():
    text, repairs = normalize(b"caf\xe9 \xff\xfe ok \xe2\x82")
    assert text == "caf\ufffd \ufffd\ufffd ok \ufffd\ufffd"
    assert repairs == 5


def test_valid_utf8_bytes_decode_without_repairs():
    assert decode_utf8("naïve ☃".encode()) == ("naïve ☃", 0)


def test_lone_surrogates_from_json_are_repaired_and_counted():
    decoded = json.loads('"bad \\ud800 half \\udfff pair \\ud83d\\ude00"')
    text, repairs = normalize(decoded)
    assert text == "bad \ufffd half \ufffd pair 😀"
    assert repairs == 2
    text.encode("utf-8")


def test_repair_surrogates_leaves_valid_text_alone():
    assert repair_surrogates("fine 😀") == ("fine 😀", 0)


def test_whitespace_and_case_are_not_collapsed():
    text = "  Leading\n\n\n\nMANY   spaces  \t\n"
    assert normalize(text)[0] == text


def test_normalize_is_idempotent():
    once, _ = normalize(b"x\xff\r\ne\xcc\x81\x00")
    assert normalize(once) == (once, 0)


def test_normalize_document_keeps_identity():
    document = make_document("e\u0301\x00", "corpus.jsonl:3")
    normalized, repairs = normalize_document(document)
    assert normalized.text == "é"
    assert (normalized.source, normalized.doc_id) == (document.source, document.doc_id)
    assert repairs == 0


@pytest.mark.parametrize("bad", [b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
def test_every_invalid_sequence_yields_encodable_text(bad):
    text, repairs = normalize(b"a" + bad + b"b")
    assert repairs == len(bad)
    assert text.encode("utf-8").startswith(b"a")
