"""The staged `gptjax prepare` pipeline: each stage wired, shards, report, bad input, GPT-2 ids, TFDS, CLI flags."""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import dir_snapshot

from gptjax.cli import prepare as prepare_cli
from gptjax.config import DataConfig, PrepareConfig
from gptjax.data import store
from gptjax.data import tokenizer as tokenizers
from gptjax.data.gpt2_bpe import GPT2BPETokenizer
from gptjax.errors import GptjaxError
from gptjax.prepare import quality
from gptjax.prepare.normalize import normalize
from gptjax.prepare.pipeline import read_report, run_pipeline, work_dir_for
from gptjax.prepare.settings import check as settings_check
from gptjax.prepare.stages import doc_in_val

FIXTURES = Path(__file__).parent / "fixtures"
PARAGRAPHS = [json.loads(line)["text"] for line in
              (FIXTURES / "data" / "dedup" / "inaugural_paragraphs.jsonl").read_text().splitlines()]
FRENCH = " ".join(line.split("\t", 1)[1].strip() for line in
                  (FIXTURES / "data" / "langid" / "lingua_first10.tsv").read_text().splitlines()
                  if line.startswith("fr\t"))


DATA_FIELDS = {field.name for field in dataclasses.fields(DataConfig)}


def settings(**overrides) -> DataConfig:
    """Small, fast pipeline settings: char tokenizer, one process, normalization on, every filter off unless
    overridden (DataConfig fields by name, the rest go to its prepare section)."""
    data = dict(dataset="", tokenizer="char", val_fraction=0.1)
    prepare = dict(workers=1, normalize=True, quality=False, dedup="none", chunk_bytes=8000, max_doc_bytes=32 << 20)
    for name, value in overrides.items():
        (data if name in DATA_FIELDS else prepare)[name] = value
    return DataConfig(**data, prepare=PrepareConfig(**prepare))


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def near_copy(text: str, seed: int) -> str:
    """`text` with one word replaced: word 5-gram Jaccard stays well above 0.8 for these 60+ word paragraphs."""
    words = text.split(" ")
    position = 10 + seed * 7 % (len(words) - 20)
    words[position] = f"changed{seed}"
    return " ".join(words)


def documents_of(data_dir: Path, split: str) -> list[str]:
    """Every document of a split, decoded from the shards via their document indexes."""
    tok = tokenizers.load(data_dir / "tokenizer")
    texts = []
    for shard in store.split_shards(data_dir, split):
        tokens = store.read_tokens(shard)
        starts, lengths = store.doc_spans(store.read_doc_index(store.index_path(shard))[0], len(tokens))
        texts += [tok.decode(tokens[s:s + n].tolist()) for s, n in zip(starts, lengths)]
    return texts


def all_documents(data_dir: Path) -> list[str]:
    return documents_of(data_dir, "train") + documents_of(data_dir, "val")


# ---- stages wired ---------------------------------------------------------------------------------------------


def test_language_filter_drops_the_planted_french_document(tmp_path):
    source = write_jsonl(tmp_path / "in" / "mixed.jsonl", PARAGRAPHS[:30] + [FRENCH] + PARAGRAPHS[30:40])
    manifest = run_pipeline([str(source)], tmp_path / "out", settings(languages=("en",)), show_progress=False)
    assert manifest["stages"]["langid"]["dropped"] == {"wrong_language": 1}
    langid = read_report(tmp_path / "out")["stages"]["langid"]
    assert (langid["docs_in"], langid["docs_out"], langid["dropped"]) == (41, 40, {"wrong_language": 1})
    assert langid["examples"]["wrong_language"][0].startswith(f"{source}:31 (fr;")
    assert sorted(all_documents(tmp_path / "out")) == sorted(PARAGRAPHS[:40])


def planted_junk() -> dict[str, list[str]]:
    """Documents that break one known Gopher rule first, by that rule."""
    prose = PARAGRAPHS[:20]
    junk = {
        "too_few_words": ["Only a handful of words in this one.", "Short and sweet."],
        "hash_to_word_ratio": [prose[0] + " " + " ".join(f"#tag{i}" for i in range(40))],
        "alphabetic_token_fraction": [prose[1] + " " + " ".join(str(1000 + i) for i in range(120))],
        "bullet_line_fraction": ["\n".join(f"- {sentence.strip()}" for sentence in (prose[2] + prose[3]).split(". "))],
        "too_few_stop_words": [FRENCH],
    }
    for rule, docs in junk.items():
        for doc in docs:
            assert quality.check(doc)[0] == rule, (rule, quality.check(doc))
    return junk


def test_quality_rules_drop_planted_junk_with_the_right_reasons(tmp_path):
    junk = planted_junk()
    texts = PARAGRAPHS[20:50] + [doc for docs in junk.values() for doc in docs]
    write_jsonl(tmp_path / "in" / "web.jsonl", texts)
    run_pipeline([str(tmp_path / "in")], tmp_path / "out", settings(quality=True), show_progress=False)
    stage = read_report(tmp_path / "out")["stages"]["quality"]
    assert stage["dropped"] == {rule: len(docs) for rule, docs in junk.items()}
    assert stage["docs_out"] == 30 and sorted(all_documents(tmp_path / "out")) == sorted(PARAGRAPHS[20:50])
    assert all(example.startswith(str(tmp_path / "in" / "web.jsonl")) for ex in stage["examples"].values()
               for example in ex)


def test_near_duplicates_collapse_to_one_per_cluster(tmp_path):
    originals = PARAGRAPHS[:5]
    texts = list(PARAGRAPHS[:40])
    for cluster, original in enumerate(originals):
        texts += [near_copy(original, 3 * cluster + k) for k in range(3)]
    texts += [PARAGRAPHS[10], "  " + PARAGRAPHS[11].upper() + "  "]
    write_jsonl(tmp_path / "in" / "a.jsonl", texts[:45])
    write_jsonl(tmp_path / "in" / "b.jsonl", texts[45:])
    run_pipeline([str(tmp_path / "in")], tmp_path / "out", settings(dedup="near"), show_progress=False)
    stages = read_report(tmp_path / "out")["stages"]
    assert stages["dedup_exact"]["dropped"] == {"exact_duplicate": 2}
    assert stages["dedup_exact"]["notes"]["clusters"] == 2
    assert stages["dedup_near"]["dropped"] == {"near_duplicate": 15}
    assert stages["dedup_near"]["notes"]["clusters"] == 5
    assert stages["dedup_near"]["notes"]["largest_cluster"] == 4
    assert "(duplicate of " in stages["dedup_near"]["examples"]["near_duplicate"][0]
    assert sorted(all_documents(tmp_path / "out")) == sorted(PARAGRAPHS[:40]), "the first copy of each cluster stays"


def test_boilerplate_lines_are_removed_across_documents(tmp_path):
    source = FIXTURES / "data" / "dedup" / "documents_with_line_duplicates"
    expected = FIXTURES / "data" / "dedup" / "documents_line_deduplicated"
    run_pipeline([str(source)], tmp_path / "out", settings(boilerplate="line", normalize=False, val_fraction=0.0),
                 show_progress=False)
    wanted = sorted(p.read_text() for p in sorted(expected.iterdir()) if p.read_text().strip())
    assert sorted(documents_of(tmp_path / "out", "train")) == wanted
    stage = read_report(tmp_path / "out")["stages"]["boilerplate"]
    assert stage["notes"]["lines_removed"] > 0 and stage["notes"]["frequent_units"] > 0


def test_shards_round_trip_across_several_shards(tmp_path):
    texts = PARAGRAPHS[:60]
    write_jsonl(tmp_path / "in" / "docs.jsonl", texts)
    manifest = run_pipeline([str(tmp_path / "in")], tmp_path / "out",
                            settings(shard_tokens=3000, chunk_bytes=5000, val_fraction=0.2), show_progress=False)
    out = tmp_path / "out"
    eot = manifest["tokenizer"]["eot_id"]
    assert len(manifest["splits"]["train"]["shards"]) >= 5
    for split in ("train", "val"):
        entries = manifest["splits"][split]["shards"]
        for entry in entries:
            tokens = store.read_tokens(out / entry["file"])
            starts, lengths = store.doc_spans(store.read_doc_index(out / entry["index"])[0], len(tokens))
            assert len(tokens) == entry["n_tokens"] and len(starts) == entry["n_documents"]
            assert len(tokens) <= 3000 or len(starts) == 1
            assert all(tokens[s - 1] == eot for s in starts[1:]) and np.count_nonzero(tokens == eot) == len(starts) - 1
        assert manifest["splits"][split]["n_tokens"] == sum(e["n_tokens"] for e in entries)
        wanted = [t for t in texts if doc_in_val(t, 0.2) == (split == "val")]
        assert documents_of(out, split) == wanted, "documents keep corpus order within a split"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(("train-", "val-"))) == [
        "manifest.json", "report.json", "tokenizer"]
    assert not work_dir_for(out).exists()


# ---- report and CLI ------------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    prepare_cli.add_arguments(parser)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """The prepare section of the config the flags describe (the tokenizer fields live in DataConfig)."""
    return prepare_cli.config_from_args(args).prepare


def test_cli_flags_map_to_settings():
    args = parse(["--input", "a.jsonl", "b", "--out", "o", "--languages", "en, de", "--no-quality", "--dedup", "exact",
                  "--jaccard", "0.7", "--num-perm", "64", "--bands", "16", "--workers", "3", "--shard-tokens", "1000",
                  "--tokenizer", "sentencepiece", "--model-type", "unigram", "--vocab-size", "512", "--sample-docs",
                  "10", "--no-byte-fallback", "--text-field", "content", "--boilerplate", "paragraph"])
    config = config_from_args(args)
    assert args.input == ["a.jsonl", "b"] and config.languages == ("en", "de") and not config.quality
    assert (config.dedup, config.jaccard, config.num_perm, config.bands, config.workers) == ("exact", 0.7, 64, 16, 3)
    data = prepare_cli.config_from_args(args)
    assert (data.tokenizer, config.model_type, data.vocab_size, config.byte_fallback) == (
        "sentencepiece", "unigram", 512, False)
    assert (config.shard_tokens, config.sample_docs, config.text_field, config.boilerplate) == (
        1000, 10, "content", "paragraph")
    defaults = config_from_args(parse(["--input", "x", "--out", "y"]))
    assert defaults.quality and defaults.normalize and defaults.dedup == "near" and defaults.languages == ()
    raw = config_from_args(parse(["--input", "x", "--out", "y", "--raw", "--languages", "en"]))
    assert (raw.quality, raw.normalize, raw.dedup, raw.languages, raw.boilerplate) == (False, False, "none", (), "none")
    with pytest.raises(GptjaxError, match="num_perm"):
        settings_check(settings(dedup="near", num_perm=10, bands=20))
    with pytest.raises(GptjaxError, match="tokenizer-dir"):
        settings_check(settings(tokenizer="gpt2_bpe"))


def test_report_lists_every_stage_and_prints_a_table(tmp_path, capsys):
    write_jsonl(tmp_path / "in" / "web.jsonl",
                PARAGRAPHS[:30] + PARAGRAPHS[:3] + [FRENCH, "This is a short note about the meeting."])
    code = prepare_cli.run(parse(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--languages", "en",
                              "--workers", "1", "--quiet"]), [])
    assert code == 0 and "prepared" in capsys.readouterr().out
    report = read_report(tmp_path / "out")
    stages = report["stages"]
    assert list(stages) == ["read", "normalize", "langid", "quality", "dedup_exact", "dedup_near", "split", "tokenize",
                            "shard"]
    assert stages["read"]["docs_out"] == 35 and stages["langid"]["dropped"] == {"wrong_language": 1}
    assert stages["quality"]["dropped"] == {"too_few_words": 1} and stages["dedup_exact"]["dropped"] == {
        "exact_duplicate": 3}
    assert stages["shard"]["docs_out"] == 30 and stages["tokenize"]["tokens_out"] > 0
    for stage in stages.values():
        assert {"docs_in", "docs_out", "bytes_in", "bytes_out", "tokens_out", "seconds", "dropped",
                "examples"} <= set(stage)
    assert set(report["wall_seconds"]) >= {"read+clean", "dedup", "tokenizer", "tokenize", "shard", "total"}
    assert report["resume"]["token_parts"] == {"reused": 0, "computed": 1}
    prepare_cli.run(parse(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "--workers", "1"]), [])
    printed = capsys.readouterr().out
    assert "stage" in printed and "dedup_exact" in printed and "exact_duplicate 3" in printed


# ---- bad input ------------------------------------------------------------------------------------------------


def test_bad_inputs_are_counted_with_examples_and_sources_stay_untouched(tmp_path):
    src = tmp_path / "in"
    write_jsonl(src / "good.jsonl", PARAGRAPHS[:20])
    (src / "latin1.txt").write_bytes(PARAGRAPHS[20].encode() + b" caf\xe9 \xff\xfe end")
    (src / "empty.txt").write_bytes(b"")
    (src / "binary.txt").write_bytes(b"\x00\x01\x02ELF" * 100)
    with open(src / "huge.jsonl", "wb") as f:
        f.write(b'{"text": "')
        block = b"a" * (1 << 20)
        for _ in range(100):
            f.write(block)
        f.write(b'"}\n')
    (src / "broken.jsonl").write_text('{"text": "fine ' + PARAGRAPHS[21]
                                      + '"}\nnot json at all\n{"body": "no text"}\n[1, 2]\n')
    before = dir_snapshot(src)
    run_pipeline([str(src)], tmp_path / "out", settings(), show_progress=False)
    assert dir_snapshot(src) == before
    read = read_report(tmp_path / "out")["stages"]["read"]
    assert read["dropped"] == {"binary_file": 1, "empty_file": 1, "record_too_long": 1, "invalid_json": 1,
                               "missing_text_field": 1, "not_a_json_object": 1}
    assert read["notes"]["invalid_utf8_bytes"] == 3 and read["notes"]["invalid_utf8_records"] == 1
    assert read["examples"]["binary_file"] == [str(src / "binary.txt")]
    assert read["examples"]["record_too_long"] == [f"{src / 'huge.jsonl'}:1"]
    assert read["examples"]["invalid_json"][0].startswith(f"{src / 'broken.jsonl'}:2")
    assert read["docs_out"] == 22
    texts = all_documents(tmp_path / "out")
    assert normalize(PARAGRAPHS[20] + " caf\ufffd \ufffd\ufffd end")[0] in texts


def test_a_corpus_that_filters_to_nothing_is_one_clear_error(tmp_path):
    write_jsonl(tmp_path / "in" / "fr.jsonl", [FRENCH, FRENCH + " encore"])
    (tmp_path / "in" / "empty.txt").write_text("")
    with pytest.raises(GptjaxError, match=r"no documents left after cleaning: read 2 files, 2 documents; dropped: "
                                          r"langid/wrong_language 2 \(e\.g\. .*fr\.jsonl:1"):
        run_pipeline([str(tmp_path / "in")], tmp_path / "out", settings(languages=("en",)), show_progress=False)
    assert not (tmp_path / "out").exists() and not work_dir_for(tmp_path / "out").exists()
    with pytest.raises(GptjaxError, match="does not exist"):
        run_pipeline([str(tmp_path / "nowhere")], tmp_path / "out", settings(), show_progress=False)


# ---- tokenizers through the pipeline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gpt2")
    shutil.copy(FIXTURES / "gpt2" / "gpt2_vocab.json", path / "vocab.json")
    shutil.copy(FIXTURES / "gpt2" / "gpt2_merges.txt", path / "merges.txt")
    return path


def test_gpt2_bpe_ids_through_the_pipeline(tmp_path, gpt2_dir):
    texts = PARAGRAPHS[:25]
    write_jsonl(tmp_path / "in" / "docs.jsonl", texts)
    manifest = run_pipeline([str(tmp_path / "in")], tmp_path / "out",
                            settings(tokenizer="gpt2_bpe", tokenizer_dir=str(gpt2_dir), val_fraction=0.2),
                            show_progress=False)
    assert manifest["tokenizer"]["eot_id"] == 50256 and manifest["tokenizer"]["vocab_size"] == 50257
    reference = GPT2BPETokenizer.from_files(gpt2_dir / "vocab.json", gpt2_dir / "merges.txt")
    train = [t for t in texts if not doc_in_val(t, 0.2)]
    expected = []
    for i, text in enumerate(train):
        expected += ([50256] if i else []) + reference.encode(text)
    shard = store.split_shards(tmp_path / "out", "train")[0]
    assert store.read_header(shard).itemsize == 2
    assert store.read_tokens(shard).tolist() == expected


def test_sentencepiece_trained_on_a_sample_of_the_cleaned_corpus(tmp_path):
    write_jsonl(tmp_path / "in" / "docs.jsonl", PARAGRAPHS)
    manifest = run_pipeline([str(tmp_path / "in")], tmp_path / "out",
                            settings(tokenizer="sentencepiece", vocab_size=400, sample_docs=20, model_type="unigram"),
                            show_progress=False)
    info = read_report(tmp_path / "out")["tokenizer"]
    assert 10 <= info["sample_docs"] <= 35 and info["model_type"] == "unigram" and info["byte_fallback"]
    assert manifest["tokenizer"]["vocab_size"] == 400
    assert sorted(all_documents(tmp_path / "out")) == sorted(PARAGRAPHS)


# ---- TFDS ------------------------------------------------------------------------------------------------------


def test_tfds_builder_opens_with_data_source_and_yields_the_same_tokens(tmp_path):
    import tensorflow_datasets as tfds

    write_jsonl(tmp_path / "in" / "docs.jsonl", PARAGRAPHS[:30])
    run_pipeline([str(tmp_path / "in")], tmp_path / "out", settings(tfds=True, shard_tokens=4000), show_progress=False)
    sources = tfds.data_source("gptjax_tokens", data_dir=str(tmp_path / "out" / "tfds"))
    for split in ("train", "val"):
        expected = []
        for shard in store.split_shards(tmp_path / "out", split):
            tokens = store.read_tokens(shard)
            starts, lengths = store.doc_spans(store.read_doc_index(store.index_path(shard))[0], len(tokens))
            expected += [tokens[s:s + n].astype(np.int32) for s, n in zip(starts, lengths)]
        assert len(sources[split]) == len(expected)
        for index, tokens in enumerate(expected):
            np.testing.assert_array_equal(sources[split][index]["tokens"], tokens)
    assert "tensorflow" not in sys.modules


def test_report_drop_counts_add_up(tmp_path):
    write_jsonl(tmp_path / "in" / "docs.jsonl", PARAGRAPHS[:20] + [PARAGRAPHS[0]] + ["tiny"])
    run_pipeline([str(tmp_path / "in")], tmp_path / "out", settings(quality=True, dedup="exact"), show_progress=False)
    for name, stage in read_report(tmp_path / "out")["stages"].items():
        if name in ("normalize", "quality", "dedup_exact"):
            assert stage["docs_in"] - stage["docs_out"] == sum(Counter(stage["dropped"]).values()), name


def test_a_saved_tokenizer_is_reused_instead_of_trained(tmp_path):
    write_jsonl(tmp_path / "a" / "docs.jsonl", PARAGRAPHS[:40])
    write_jsonl(tmp_path / "b" / "docs.jsonl", PARAGRAPHS[5:40])
    first = run_pipeline([str(tmp_path / "a")], tmp_path / "out_a", settings(val_fraction=0.2), show_progress=False)
    second = run_pipeline([str(tmp_path / "b")], tmp_path / "out_b",
                          settings(val_fraction=0.2, tokenizer_dir=str(tmp_path / "out_a" / "tokenizer")),
                          show_progress=False)
    assert second["tokenizer"] == first["tokenizer"]
    with pytest.raises(GptjaxError, match="holds a char tokenizer"):
        run_pipeline([str(tmp_path / "b")], tmp_path / "out_c",
                     settings(tokenizer="sentencepiece", tokenizer_dir=str(tmp_path / "out_a" / "tokenizer")),
                     show_progress=False)


def test_every_reader_format_feeds_the_pipeline(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    src = tmp_path / "in"
    write_jsonl(src / "plain.jsonl", PARAGRAPHS[:5])
    (src / "packed.jsonl.gz").write_bytes(gzip.compress(
        "".join(json.dumps({"text": t}) + "\n" for t in PARAGRAPHS[17:22]).encode()))
    (src / "nested" / "packed.jsonl.zst").parent.mkdir()
    (src / "nested" / "packed.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"text": t}) + "\n" for t in PARAGRAPHS[5:10]).encode()))
    pq.write_table(pa.table({"text": PARAGRAPHS[10:15]}), src / "table.parquet")
    (src / "book.txt").write_text(PARAGRAPHS[15] + "\n\n" + PARAGRAPHS[16])
    manifest = run_pipeline([str(src / "*.jsonl*"), str(src / "nested"), str(src / "table.parquet"),
                             str(src / "book.txt")], tmp_path / "out", settings(dedup="exact"), show_progress=False)
    assert sum(manifest["splits"][s]["n_documents"] for s in ("train", "val")) == 21
    assert read_report(tmp_path / "out")["stages"]["read"]["notes"]["files"] == 5


# ---- decisions file -------------------------------------------------------------------------------------------


def test_decisions_file_says_what_happened_to_every_document(tmp_path):
    from gptjax.cli import main as gptjax_main

    texts = list(PARAGRAPHS[:30])
    texts += ["  " + PARAGRAPHS[0].upper() + "  ", near_copy(PARAGRAPHS[1], 1), near_copy(PARAGRAPHS[1], 2)]
    texts += [FRENCH, "This is a short note about the meeting."]
    texts += [PARAGRAPHS[35], "\n".join(PARAGRAPHS[35:38])]  # the first is all boilerplate, under half the second
    source = write_jsonl(tmp_path / "in" / "web.jsonl", texts)
    decisions = tmp_path / "audit" / "decisions.jsonl"
    assert gptjax_main(["prepare", "--input", str(source), "--out", str(tmp_path / "out"), "--languages", "en",
                        "--boilerplate", "line", "--chunk-mb", "0.01", "--workers", "1", "--quiet",
                        "--decisions", str(decisions)]) == 0
    records = [json.loads(line) for line in decisions.read_text().splitlines()]
    assert [r["source"] for r in records] == [f"{source}:{line}" for line in range(1, len(texts) + 1)]
    assert all(r["doc_id"] and isinstance(r["kept"], bool) for r in records)
    report = read_report(tmp_path / "out")
    assert report["resume"]["clean_chunks"]["computed"] > 1, "duplicates must be found across chunks"
    dropped = Counter(f"{r['stage']}/{r['reason']}" for r in records if not r["kept"])
    assert dropped == Counter({f"{stage}/{reason}": count for stage, entry in report["stages"].items()
                               for reason, count in entry["dropped"].items()})
    assert dropped == Counter({"langid/wrong_language": 1, "quality/too_few_words": 1, "dedup_exact/exact_duplicate": 1,
                               "dedup_near/near_duplicate": 2, "boilerplate/empty_after_boilerplate": 1})
    assert sum(r["kept"] for r in records) == report["stages"]["shard"]["docs_out"] == 31
    by_source = {r["source"]: r for r in records}
    assert by_source[f"{source}:31"]["duplicate_of"] == {"source": f"{source}:1", "doc_id": records[0]["doc_id"]}
    assert {by_source[f"{source}:{line}"]["duplicate_of"]["source"] for line in (32, 33)} == {f"{source}:2"}
    assert by_source[f"{source}:34"]["stage"] == "langid" and by_source[f"{source}:36"]["stage"] == "boilerplate"
    assert not list(decisions.parent.glob(".*")), "written atomically: no temporary file is left"


@pytest.mark.parametrize("flags,expected", [
    (["--num-perm", "10", "--bands", "20"], "num_perm=10"),
    (["--languages", "en,xx"], "does not know the codes xx"),
    (["--tokenizer", "gpt2_bpe"], "needs data.tokenizer_dir (--tokenizer-dir)"),
    (["--chunk-mb", "0", "--shard-tokens", "0"], "data.prepare.shard_tokens=0 (--shard-tokens) must be >= 1"),
    (["--tokenizer-dir", "/no/such/tokenizer"], "/no/such/tokenizer holds no tokenizer (no tokenizer.json)"),
    (["--tokenizer", "gpt2_bpe", "--tokenizer-dir", "/no/such"], "no tokenizer.json nor vocab.json + merges.txt"),
    (["--workers", "-2"], "data.prepare.workers=-2 (--workers) must be >= 1"),
])
def test_bad_settings_exit_2_with_one_line_before_any_work(tmp_path, capsys, flags, expected):
    from gptjax.cli import main as gptjax_main

    source = write_jsonl(tmp_path / "in" / "docs.jsonl", PARAGRAPHS[:5])
    assert gptjax_main(["prepare", "--input", str(source), "--out", str(tmp_path / "out"), "--quiet", *flags]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gptjax: error:")]
    assert len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "out").exists() and not work_dir_for(tmp_path / "out").exists()


@pytest.mark.parametrize("same_settings", [True, False])
def test_a_prepare_that_waited_for_a_concurrent_one_compares_its_settings(tmp_path, same_settings):
    import threading

    from gptjax.fileio import exclusive_lock

    source = write_jsonl(tmp_path / "in" / "docs.jsonl", PARAGRAPHS[:8])
    elsewhere = tmp_path / "first"
    run_pipeline([str(source)], elsewhere, settings(dedup="exact"), show_progress=False)
    out = tmp_path / "out"
    second = settings(dedup="exact" if same_settings else "none")
    outcome = {}

    def waiting_prepare():
        try:
            outcome["manifest"] = run_pipeline([str(source)], out, second, show_progress=False)
        except GptjaxError as error:
            outcome["error"] = str(error)

    with exclusive_lock(out.parent / f".{out.name}.lock", "the first prepare"):  # the first prepare, still running
        thread = threading.Thread(target=waiting_prepare)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive(), "the second prepare waits for the first"
        shutil.copytree(elsewhere, out)  # what the first prepare leaves when it finishes
    thread.join(timeout=120)
    if same_settings:
        assert outcome["manifest"] == store.read_manifest(out)
    else:
        assert "prepared meanwhile by another `gptjax prepare` from other settings" in outcome["error"]
        assert store.read_manifest(out) == store.read_manifest(elsewhere), "nothing was changed"
