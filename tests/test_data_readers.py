"""Tests for gptjax.prepare.readers: every supported format and every kind of bad input."""
import gzip
import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from gptjax.errors import GptjaxError
from gptjax.prepare.documents import stable_id
from gptjax.prepare.readers import InputPathError, ReaderConfig, ReadStats, read_documents, resolve_inputs


def read_all(inputs, config=None):
    stats = ReadStats()
    documents = list(read_documents(inputs, config or ReaderConfig(), stats))
    return documents, stats


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def test_txt_whole_file_is_one_document(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("line one\n\nline two\n", encoding="utf-8")
    documents, stats = read_all(path)
    assert [(d.text, d.source) for d in documents] == [("line one\n\nline two\n", str(path))]
    assert documents[0].doc_id == stable_id(str(path))
    assert stats["documents"] == 1 and stats["files"] == 1


def test_txt_blank_line_split_reports_start_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first para\nstill first\n\n \t\nsecond\n\n\n\nthird\n", encoding="utf-8")
    documents, _ = read_all(path, ReaderConfig(txt_mode="blank_lines"))
    assert [d.text for d in documents] == ["first para\nstill first", "second", "third"]
    assert [d.source for d in documents] == [f"{path}:1", f"{path}:5", f"{path}:9"]


def test_txt_separator_split(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("doc one<|endoftext|>doc\ntwo<|endoftext|><|endoftext|>doc three", encoding="utf-8")
    documents, stats = read_all(path, ReaderConfig(txt_mode="separator", separator="<|endoftext|>"))
    assert [d.text for d in documents] == ["doc one", "doc\ntwo", "doc three"]
    assert [d.source for d in documents] == [f"{path}:1", f"{path}:1", f"{path}:2"]
    assert stats["empty_document"] == 1


def test_separator_straddling_read_chunks_is_found(tmp_path):
    separator = "<SEP>"
    first = "a" * ((1 << 20) - 2)
    path = tmp_path / "big.txt"
    path.write_text(first + separator + "tail" + separator + "é" * 10, encoding="utf-8")
    documents, _ = read_all(path, ReaderConfig(txt_mode="separator", separator=separator))
    assert [len(d.text) for d in documents] == [len(first), 4, 10]


def test_jsonl_plain_gzip_and_zstd_with_custom_field(tmp_path):
    records = [{"content": "alpha", "id": 1}, {"content": "beta"}]
    payload = "".join(json.dumps(record) + "\n" for record in records).encode()
    (tmp_path / "a.jsonl").write_bytes(payload)
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as handle:
        handle.write(payload)
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    documents, stats = read_all(tmp_path, ReaderConfig(text_field="content"))
    assert [d.text for d in documents] == ["alpha", "beta"] * 3
    assert [d.source for d in documents][:2] == [f"{tmp_path / 'a.jsonl'}:1", f"{tmp_path / 'a.jsonl'}:2"]
    assert stats["files"] == 3 and stats["documents"] == 6


def test_zstd_multi_frame_stream(tmp_path):
    compressor = zstandard.ZstdCompressor()
    frames = compressor.compress(b'{"text": "one"}\n') + compressor.compress(b'{"text": "two"}\n')
    (tmp_path / "m.jsonl.zst").write_bytes(frames)
    documents, _ = read_all(tmp_path / "m.jsonl.zst")
    assert [d.text for d in documents] == ["one", "two"]


def test_large_zstd_file_spanning_many_reads(tmp_path):
    texts = [f"record {i} {'x' * (i % 97)} {i * 7919 % 10007}" for i in range(60_000)]
    payload = "".join(json.dumps({"text": text}) + "\n" for text in texts).encode()
    compressed = zstandard.ZstdCompressor(level=1).compress(payload)
    assert len(compressed) > 4 * (1 << 16)
    (tmp_path / "big.jsonl.zst").write_bytes(compressed)
    documents, stats = read_all(tmp_path)
    assert [d.text for d in documents] == texts
    assert stats["corrupt_file"] == 0


def test_parquet_in_batches_with_custom_column(tmp_path):
    path = tmp_path / "t.parquet"
    texts = [f"row {i}" for i in range(25)]
    texts[3] = None
    pq.write_table(pa.table({"body": texts, "n": list(range(25))}), path, row_group_size=10)
    documents, stats = read_all(path, ReaderConfig(text_column="body", parquet_batch_rows=4))
    assert [d.text for d in documents] == [t for t in texts if t is not None]
    assert documents[3].source == f"{path}#4"
    assert stats["null_text"] == 1 and stats.examples["null_text"] == [f"{path}#3"]


def test_parquet_binary_column_is_decoded_with_repairs(tmp_path):
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": pa.array([b"ok", b"bad \xff"], type=pa.binary())}), path)
    documents, stats = read_all(path)
    assert [d.text for d in documents] == ["ok", "bad \ufffd"]
    assert stats["invalid_utf8_bytes"] == 1


def test_parquet_missing_column_skips_file(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"other": ["x"]}), path)
    documents, stats = read_all(path)
    assert documents == []
    assert stats["missing_text_column"] == 1
    assert "other" in stats.examples["missing_text_column"][0]


def test_folder_recursion_globs_and_sorted_order(tmp_path):
    for relative in ["b/z.txt", "a/y.txt", "a/deep/x.txt", "c.txt", "notes.md"]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(relative, encoding="utf-8")
    documents, stats = read_all(tmp_path)
    assert [d.text for d in documents] == ["a/deep/x.txt", "a/y.txt", "b/z.txt", "c.txt"]
    assert stats["unsupported_file"] == 1
    globbed, _ = read_all([str(tmp_path / "**" / "*.txt"), tmp_path / "c.txt"])
    assert [d.text for d in globbed] == [d.text for d in documents]
    assert resolve_inputs(str(tmp_path / "a" / "*.txt")) == [tmp_path / "a" / "y.txt"]
    every_folder, stats = read_all(str(tmp_path / "**"))
    assert len(every_folder) == 4 and stats["unsupported_file"] == 1


def test_doc_ids_are_stable_and_distinct(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "same"}, {"text": "same"}])
    first, _ = read_all(tmp_path)
    second, _ = read_all(tmp_path)
    assert [d.doc_id for d in first] == [d.doc_id for d in second]
    assert len({d.doc_id for d in first}) == 2


def test_reading_is_lazy(tmp_path):
    for name in ["a.txt", "b.txt"]:
        (tmp_path / name).write_text(name, encoding="utf-8")
    stats = ReadStats()
    stream = read_documents(tmp_path, stats=stats)
    assert stats["files"] == 0
    assert next(stream).text == "a.txt"
    assert stats["files"] == 1


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café naïve".encode("latin-1"))
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "ok \xff\xfe"}\n{"text": "clean"}\n')
    documents, stats = read_all(tmp_path)
    assert [d.text for d in documents] == ["ok \ufffd\ufffd", "clean", "caf\ufffd na\ufffdve"]
    assert stats["invalid_utf8_bytes"] == 4
    assert stats["invalid_utf8_records"] == 2
    assert stats.examples["invalid_utf8_bytes"] == [f"{tmp_path / 'bad.jsonl'}:1", str(tmp_path / "latin1.txt")]


def test_binary_files_are_skipped_and_counted(tmp_path):
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with gzip.open(tmp_path / "blob.jsonl.gz", "wb") as handle:
        handle.write(b"\x00" * 100)
    (tmp_path / "late_nul.txt").write_bytes(b"x" * 2000 + b"\x00")
    documents, stats = read_all(tmp_path)
    assert stats["binary_file"] == 2
    assert sorted(stats.examples["binary_file"]) == [str(tmp_path / "blob.jsonl.gz"), str(tmp_path / "image.txt")]
    assert [d.source for d in documents] == [str(tmp_path / "late_nul.txt")]


def test_empty_files_and_blank_documents_are_counted(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "spaces.txt").write_text("  \n\n\t\n", encoding="utf-8")
    with gzip.open(tmp_path / "empty.jsonl.gz", "wb"):
        pass
    documents, stats = read_all(tmp_path)
    assert documents == []
    assert stats["empty_file"] == 3
    assert stats["empty_document"] == 1


def test_bad_jsonl_lines_are_counted_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "good one"}\n'
        b"this is not json\n"
        b'{"title": "no text field"}\n'
        b"\n"
        b'["a", "list"]\n'
        b'{"text": 42}\n'
        b'{"text": null}\n'
        b'{"text": "unterminated\n'
        b'{"text": "good two"}'
    )
    documents, stats = read_all(path)
    assert [d.text for d in documents] == ["good one", "good two"]
    assert [d.source for d in documents] == [f"{path}:1", f"{path}:9"]
    assert stats["invalid_json"] == 2
    assert stats.examples["invalid_json"][0].startswith(f"{path}:2 ")
    assert stats.examples["invalid_json"][1].startswith(f"{path}:8 ")
    assert stats.examples["missing_text_field"] == [f"{path}:3"]
    assert stats.examples["blank_line"] == [f"{path}:4"]
    assert stats.examples["not_a_json_object"] == [f"{path}:5"]
    assert stats.examples["non_string_text"] == [f"{path}:6 (int)"]
    assert stats.examples["null_text"] == [f"{path}:7"]


def test_examples_are_capped_but_counts_are_not(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("oops\n" * 50, encoding="utf-8")
    _, stats = read_all(path)
    assert stats["invalid_json"] == 50
    assert len(stats.examples["invalid_json"]) == stats.max_examples_per_reason
    assert "invalid_json: 50" in stats.summary()


def test_lone_surrogate_escapes_are_repaired(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "half \\ud800 pair"}\n', encoding="utf-8")
    documents, stats = read_all(path)
    assert documents[0].text == "half \ufffd pair"
    assert stats["lone_surrogates"] == 1


def test_truncated_compressed_files_do_not_stop_the_stream(tmp_path):
    payload = "".join(json.dumps({"text": f"record {i} " * 20}) + "\n" for i in range(200)).encode()
    (tmp_path / "a_cut.jsonl.gz").write_bytes(gzip.compress(payload)[:300])
    (tmp_path / "b_cut.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload)[:300])
    (tmp_path / "c_garbage.jsonl.gz").write_bytes(b"not gzip at all")
    (tmp_path / "d_fine.jsonl").write_text('{"text": "survivor"}\n', encoding="utf-8")
    (tmp_path / "e_not.parquet").write_bytes(b"PAR1 definitely not parquet")
    documents, stats = read_all(tmp_path)
    assert documents[-1].text == "survivor"
    assert stats["corrupt_file"] == 4
    assert {example.split(" ")[0] for example in stats.examples["corrupt_file"]} >= {
        str(tmp_path / "a_cut.jsonl.gz"),
        str(tmp_path / "b_cut.jsonl.zst"),
    }


def test_hundred_megabyte_line_streams_with_bounded_memory(tmp_path):
    line_bytes = 100_000_000
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"text": "')
        chunk = b"abcdefghij" * 100_000
        for _ in range(line_bytes // len(chunk)):
            handle.write(chunk)
        handle.write(b'"}\n{"text": "after"}\n')

    tracemalloc.start()
    try:
        stats = ReadStats()
        lengths = [len(d.text) for d in read_documents(path, stats=stats)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lengths == [line_bytes, 5]
    assert peak < 2.5 * line_bytes

    tracemalloc.start()
    try:
        stats = ReadStats()
        texts = [d.text for d in read_documents(path, ReaderConfig(max_record_bytes=1 << 20), stats)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert texts == ["after"]
    assert stats.examples["record_too_long"] == [f"{path}:1"]
    assert peak < 8 * (1 << 20)


def test_oversized_records_in_text_modes_are_skipped(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("short\n\n" + "x" * 5000 + "\n\nshort again\n", encoding="utf-8")
    documents, stats = read_all(path, ReaderConfig(txt_mode="blank_lines", max_record_bytes=1000))
    assert [d.text for d in documents] == ["short", "short again"]
    assert stats.examples["record_too_long"] == [f"{path}:3"]
    separated = tmp_path / "s.txt"
    separated.write_text("a|" + "y" * (3 << 20) + "|b", encoding="utf-8")
    documents, stats = read_all(separated, ReaderConfig(txt_mode="separator", separator="|", max_record_bytes=1 << 20))
    assert [d.text for d in documents] == ["a", "b"]
    assert stats["record_too_long"] == 1
    documents, stats = read_all(separated, ReaderConfig(max_record_bytes=1000))
    assert documents == [] and stats["record_too_long"] == 1


def test_missing_path_raises_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere" / "corpus.jsonl"
    with pytest.raises(ValueError) as raised:
        read_documents(missing)
    message = str(raised.value)
    assert "\n" not in message
    assert str(missing) in message and "does not exist" in message
    assert isinstance(raised.value, GptjaxError)


def test_glob_and_folder_without_matches_raise(tmp_path):
    with pytest.raises(InputPathError, match="matches no file"):
        read_documents(str(tmp_path / "*.jsonl"))
    (tmp_path / "only.md").write_text("x", encoding="utf-8")
    with pytest.raises(InputPathError, match="folder"):
        read_documents(tmp_path)
    with pytest.raises(InputPathError, match="unsupported suffix"):
        read_documents(tmp_path / "only.md")
    with pytest.raises(InputPathError, match="no input paths"):
        read_documents([])


def test_reader_config_validation():
    with pytest.raises(GptjaxError, match="separator"):
        ReaderConfig(txt_mode="separator")
    with pytest.raises(GptjaxError, match="txt_mode"):
        ReaderConfig(txt_mode="lines")
