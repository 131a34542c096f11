"""The core data path: token store, char/sentencepiece tokenizers, `prepare`/`resolve_data`, window loader."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gptjax.config import DataConfig
from gptjax.data import loader, store
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.prepare.resolve import BUNDLED_DIR, doc_in_val, prepare, resolve_data

FP = "ab" * 32
CORPUS_EN = Path(__file__).parent / "fixtures" / "gpt2" / "corpus.en"


# ---- store ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_store_round_trip(tmp_path, dtype):
    tokens = np.arange(1000, dtype=dtype) * 7
    path = tmp_path / "t.bin"
    store.write_tokens(path, tokens, FP)
    header = store.read_header(path)
    assert (header.n_tokens, header.itemsize, header.tokenizer_fingerprint) == (1000, np.dtype(dtype).itemsize, FP)
    np.testing.assert_array_equal(store.read_tokens(path), tokens)
    assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]


def test_store_doc_index_round_trip(tmp_path):
    store.write_doc_index(tmp_path / "t.idx", np.array([0, 5, 9]), FP)
    starts, fp = store.read_doc_index(tmp_path / "t.idx")
    assert starts.tolist() == [0, 5, 9] and fp == FP
    starts, lengths = store.doc_spans(starts, n_tokens=12)
    assert lengths.tolist() == [4, 3, 3]


def test_store_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with store.TokenFileWriter(tmp_path / "t.bin", np.uint16, FP) as writer:
            writer.append(np.arange(10))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_store_rejects_corrupt_and_truncated_files(tmp_path):
    path = tmp_path / "t.bin"
    store.write_tokens(path, np.arange(100, dtype=np.uint16), FP)
    good = path.read_bytes()
    path.write_bytes(good[:-10])
    with pytest.raises(GptjaxError, match="truncated or corrupt"):
        store.read_tokens(path)
    path.write_bytes(b"NOTATOKN" + good[8:])
    with pytest.raises(GptjaxError, match="bad magic"):
        store.read_header(path)
    path.write_bytes(good[:8] + (9).to_bytes(4, "little") + good[12:])
    with pytest.raises(GptjaxError, match="unsupported token file version 9"):
        store.read_header(path)
    path.write_bytes(good[:20])
    with pytest.raises(GptjaxError, match="bad magic"):
        store.read_header(path)
    with pytest.raises(GptjaxError, match="not found"):
        store.read_header(tmp_path / "missing.bin")
    (tmp_path / "t.idx").write_bytes(good)
    with pytest.raises(GptjaxError, match="bad magic"):
        store.read_doc_index(tmp_path / "t.idx")


# ---- tokenizers ----------------------------------------------------------------------------------------------


def test_char_tokenizer_round_trip_and_eot():
    tok = tokenizers.CharTokenizer.train(["hello world", "abc\n"])
    assert tok.chars == "\n abcdehlorw" and tok.eot_id == len(tok.chars) == tok.vocab_size - 1
    ids = tok.encode("hello\nworld")
    assert tok.decode(ids) == "hello\nworld"
    assert tok.decode(ids + [tok.eot_id] + tok.encode("abc")) == f"hello\nworld{tokenizers.EOT}abc"
    with pytest.raises(GptjaxError, match="not in this char-level"):
        tok.encode("hello!")
    rebuilt = tokenizers.from_files(tok.files())
    assert tokenizers.fingerprint(rebuilt) == tokenizers.fingerprint(tok)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_round_trip_eot_and_byte_fallback(tmp_path, model_type):
    text = CORPUS_EN.read_text()
    docs = [text[i:i + 4000] for i in range(0, len(text), 4000)]
    tok = tokenizers.train_tokenizer("sentencepiece", docs, 400, model_type=model_type)
    sample = "Hello there,\n\n  the 2024 日本 café!"
    assert tok.decode(tok.encode(sample)) == sample
    assert tok.eot_id not in tok.encode(tokenizers.EOT), "<|endoftext|> in text must not become the control token"
    ids = tok.encode("a b") + [tok.eot_id] + tok.encode("c")
    assert tok.decode(ids) == f"a b{tokenizers.EOT}c"
    tokenizers.save(tok, tmp_path / "tok")
    loaded = tokenizers.load(tmp_path / "tok")
    assert tokenizers.fingerprint(loaded) == tokenizers.fingerprint(tok)
    assert loaded.encode(sample) == tok.encode(sample)
    again = tokenizers.train_tokenizer("sentencepiece", docs, 400, model_type=model_type)
    assert tokenizers.fingerprint(again) == tokenizers.fingerprint(tok), "training must be deterministic"


# ---- prepare / resolve_data ----------------------------------------------------------------------------------


def test_bundled_shakespeare_gives_nanogpt_split(tmp_path):
    data_dir = resolve_data(DataConfig(cache_dir=str(tmp_path)))
    manifest = store.read_manifest(data_dir)
    assert manifest["splits"]["train"]["n_tokens"] == 1_003_854
    assert manifest["splits"]["val"]["n_tokens"] == 111_540
    assert manifest["tokenizer"]["vocab_size"] == 66
    text = (BUNDLED_DIR / "tinyshakespeare.txt").read_text()
    tok = tokenizers.load(data_dir / "tokenizer")
    assert tok.chars == "".join(sorted(set(text)))
    train = store.read_tokens(store.split_shards(data_dir, "train")[0])
    val = store.read_tokens(store.split_shards(data_dir, "val")[0])
    assert tok.decode(train.tolist()) == text[:1_003_854] and tok.decode(val.tolist()) == text[1_003_854:]
    assert resolve_data(DataConfig(cache_dir=str(tmp_path))) == data_dir


def _documents(n: int) -> list[str]:
    text = CORPUS_EN.read_text()
    return [f"document {i}: " + text[i * 300:(i + 1) * 300] for i in range(n)]


def test_multi_document_hash_split_is_deterministic(tmp_path):
    docs = _documents(40)
    for i, doc in enumerate(docs):
        (tmp_path / "in" / f"{i:02d}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i:02d}.txt").write_text(doc)
    first = prepare([str(tmp_path / "in")], tmp_path / "a", val_fraction=0.25)
    second = prepare([str(tmp_path / "in")], tmp_path / "b", val_fraction=0.25)
    assert first["splits"] == second["splits"]
    expected_val = sum(doc_in_val(d, 0.25) for d in docs)
    assert 0 < expected_val < 40
    assert first["splits"]["val"]["n_documents"] == expected_val
    assert first["splits"]["train"]["n_documents"] == 40 - expected_val
    tok = tokenizers.load(tmp_path / "a" / "tokenizer")
    val_texts = set()
    for shard in store.split_shards(tmp_path / "a", "val"):
        tokens = store.read_tokens(shard)
        starts, lengths = store.doc_spans(store.read_doc_index(store.index_path(shard))[0], len(tokens))
        val_texts |= {tok.decode(tokens[s:s + n].tolist()) for s, n in zip(starts, lengths)}
    assert val_texts == {d for d in docs if doc_in_val(d, 0.25)}
    for name in ("a", "b"):
        assert (tmp_path / name / "train-00000.bin").read_bytes() == (tmp_path / "a" / "train-00000.bin").read_bytes()
    with pytest.raises(GptjaxError, match="already holds prepared data"):
        prepare([str(tmp_path / "in")], tmp_path / "a")


# ---- window loader -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("core_data")
    for i, doc in enumerate(_documents(30)):
        (root / "in" / f"{i:02d}.txt").parent.mkdir(exist_ok=True)
        (root / "in" / f"{i:02d}.txt").write_text(doc)
    prepare([str(root / "in")], root / "out", val_fraction=0.2)
    return root / "out"


def _take(iterator, n: int) -> list[np.ndarray]:
    return [next(iterator) for _ in range(n)]


def test_loader_windows_are_a_function_of_seed_and_step(small_data):
    a = _take(loader.train_iterator(small_data, 16, 8, seed=3, n_steps=6), 6)
    b = _take(loader.train_iterator(small_data, 16, 8, seed=3, n_steps=6), 6)
    c = _take(loader.train_iterator(small_data, 16, 8, seed=4, n_steps=6), 6)
    assert all(x.shape == (8, 17) and x.dtype == np.int32 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    tokens = np.concatenate([store.read_tokens(p) for p in store.split_shards(small_data, "train")])
    for row in a[0]:
        starts = np.flatnonzero(tokens[:len(tokens) - 16] == row[0])
        assert any(np.array_equal(tokens[s:s + 17], row) for s in starts), "a window is a run of the split's tokens"


def test_two_processes_rows_make_the_global_batch(small_data):
    whole = _take(loader.train_iterator(small_data, 16, 8, seed=1, n_steps=4), 4)
    halves = [_take(loader.train_iterator(small_data, 16, 8, seed=1, n_steps=4, process_index=i, process_count=2), 4)
              for i in range(2)]
    for step in range(4):
        np.testing.assert_array_equal(np.concatenate([halves[0][step], halves[1][step]]), whole[step])
    with pytest.raises(GptjaxError, match="must divide"):
        loader.train_iterator(small_data, 16, 7, seed=1, n_steps=4, process_count=2)


def test_iterator_state_resumes_exactly(small_data):
    reference = _take(loader.train_iterator(small_data, 16, 4, seed=0, n_steps=10), 10)
    first = loader.train_iterator(small_data, 16, 4, seed=0, n_steps=10)
    _take(first, 4)
    state = json.loads(json.dumps(first.get_state()))
    resumed = loader.train_iterator(small_data, 16, 4, seed=0, n_steps=10)
    resumed.set_state(state)
    for step, batch in enumerate(_take(resumed, 6), start=4):
        np.testing.assert_array_equal(batch, reference[step])


def test_eval_batches_are_fixed(small_data):
    a = loader.eval_batches(small_data, 16, 4, 3)
    b = loader.eval_batches(small_data, 16, 4, 3)
    assert len(a) == 3 and all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(GptjaxError, match="fewer than block_size"):
        loader.eval_batches(small_data, 100_000, 4, 1)


def test_a_manifest_without_its_tokenizer_is_one_clear_error(tmp_path):
    (tmp_path / store.MANIFEST).write_text(json.dumps({"format_version": 2, "splits": {}}))
    with pytest.raises(GptjaxError, match="lacks its splits or tokenizer"):
        store.read_manifest(tmp_path)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / tokenizers.SPEC_FILE).write_text('{"kind": "sentencepiece"}')
    with pytest.raises(GptjaxError, match="corrupt or incomplete"):
        tokenizers.load(tmp_path / "tokenizer")
