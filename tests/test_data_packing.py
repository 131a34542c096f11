"""Document packing, mixtures, grain worker processes, and prepare -> train end to end."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from test_data_pipeline import settings

from gptjax.config import DataConfig, MixtureStage, PrepareConfig
from gptjax.data import loader, store
from gptjax.errors import GptjaxError
from gptjax.prepare.pipeline import run_pipeline
from gptjax.prepare.resolve import resolve_data

FIXTURES = Path(__file__).parent / "fixtures"
PARAGRAPHS = [json.loads(line)["text"] for line in
              (FIXTURES / "data" / "dedup" / "inaugural_paragraphs.jsonl").read_text().splitlines()]
BLOCK = 32
WINDOW = BLOCK + 1


def raw(**overrides) -> DataConfig:
    """Char tokenizer, one process, every filter off (DataConfig fields by name, the rest prepare settings)."""
    return settings(**{"normalize": False, "chunk_bytes": PrepareConfig.chunk_bytes, **overrides})


def prepare_texts(folder: Path, texts: list[str], config: DataConfig) -> Path:
    (folder / "in").mkdir(parents=True)
    (folder / "in" / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    run_pipeline([str(folder / "in")], folder / "out", config, show_progress=False)
    return folder / "out"


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> Path:
    """Documents of 3 to 120 characters: many shorter than a row, some longer (they continue in the next row)."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghij"))
    texts = ["".join(rng.choice(letters, size=int(n))) + f"|{i}" for i, n in enumerate(rng.integers(3, 120, size=80))]
    return prepare_texts(tmp_path_factory.mktemp("varied"), texts, raw(shard_tokens=700, val_fraction=0.2))


def documents(data_dir: Path, split: str = "train") -> list[np.ndarray]:
    docs = []
    for shard in store.split_shards(data_dir, split):
        tokens = store.read_tokens(shard)
        starts, lengths = store.doc_spans(store.read_doc_index(store.index_path(shard))[0], len(tokens))
        docs += [np.asarray(tokens[s:s + n], np.int32) for s, n in zip(starts, lengths)]
    return docs


def packed(data_dir: Path, **fields) -> DataConfig:
    return DataConfig(dataset="", path=str(data_dir), packing=True, **fields)


def take(iterator, n: int) -> list:
    return [next(iterator) for _ in range(n)]


def test_packed_rows_hold_whole_documents_with_segments_and_positions(varied):
    eot = store.read_manifest(varied)["tokenizer"]["eot_id"]
    docs = {tuple(d.tolist()) for d in documents(varied)}
    batches = take(loader.train_iterator(varied, BLOCK, 4, seed=0, n_steps=60, data=packed(varied)), 60)
    pieces = []
    for batch in batches:
        assert set(batch) == {"tokens", "segment_ids", "positions"}
        assert all(v.shape == (4, WINDOW) and v.dtype == np.int32 for v in batch.values())
        for tokens, segments, positions in zip(batch["tokens"], batch["segment_ids"], batch["positions"]):
            assert segments[0] == 1 and set(np.diff(segments)) <= {0, 1}
            starts = np.flatnonzero(np.diff(segments, prepend=0))
            for begin, end in zip(starts, np.append(starts[1:], WINDOW)):
                np.testing.assert_array_equal(positions[begin:end], np.arange(end - begin))
                piece = tokens[begin:end]
                assert eot not in piece[:-1], "no document crosses a segment boundary"
                if end < WINDOW:
                    assert piece[-1] == eot, "a segment that ends inside a row ends its document"
                pieces.append(piece)
    stream = np.concatenate(pieces)
    ends = np.flatnonzero(stream == eot)
    whole = [tuple(stream[a + 1:b].tolist()) for a, b in zip(ends[:-1], ends[1:])]
    assert whole and set(whole) <= docs, "rows concatenate back into whole documents, each followed by eot"
    epoch_tokens = sum(len(d) + 1 for d in documents(varied))
    assert len(stream) > epoch_tokens, "the rows run past an epoch boundary"
    first_epoch = stream[:epoch_tokens]
    firsts = np.flatnonzero(first_epoch == eot)
    epoch_docs = [tuple(first_epoch[a + 1:b].tolist()) for a, b in zip(np.append(-1, firsts[:-1]), firsts)]
    assert sorted(epoch_docs) == sorted(tuple(d.tolist()) for d in documents(varied)), "each document once per epoch"


def test_packed_rows_are_per_step_deterministic_sharded_and_resumable(varied):
    data = packed(varied)
    reference = take(loader.train_iterator(varied, BLOCK, 4, seed=5, n_steps=8, data=data), 8)
    other_seed = take(loader.train_iterator(varied, BLOCK, 4, seed=6, n_steps=8, data=data), 8)
    assert not np.array_equal(reference[0]["tokens"], other_seed[0]["tokens"])
    halves = [take(loader.train_iterator(varied, BLOCK, 4, seed=5, n_steps=8, process_index=i, process_count=2,
                                         data=data), 8) for i in range(2)]
    for step in range(8):
        for key in reference[step]:
            np.testing.assert_array_equal(np.concatenate([halves[0][step][key], halves[1][step][key]]),
                                          reference[step][key])
    first = loader.train_iterator(varied, BLOCK, 4, seed=5, n_steps=8, data=data)
    take(first, 3)
    resumed = loader.train_iterator(varied, BLOCK, 4, seed=5, n_steps=8, data=data)
    resumed.set_state(json.loads(json.dumps(first.get_state())))
    for step, batch in enumerate(take(resumed, 5), start=3):
        for key in batch:
            np.testing.assert_array_equal(batch[key], reference[step][key])
    evals = loader.eval_batches(varied, BLOCK, 4, 2, data=data)
    assert evals[0]["tokens"].shape == (4, WINDOW) and np.array_equal(
        evals[1]["segment_ids"], loader.eval_batches(varied, BLOCK, 4, 2, data=data)[1]["segment_ids"])


def test_packed_batch_trains_only_within_documents(varied):
    import jax
    from conftest import tiny_model

    from gptjax.model.transformer import Transformer
    from gptjax.train.objectives import NextTokenLM, lm_batch

    batches = loader.train_iterator(varied, BLOCK, 2, seed=0, n_steps=20, data=packed(varied))
    batch = next(b for b in batches if b["segment_ids"].max() > 2)
    model = Transformer(tiny_model(vocab_size=store.read_manifest(varied)["tokenizer"]["vocab_size"], block_size=BLOCK,
                                   max_positions=BLOCK))
    params = model.init(jax.random.key(0), batch["tokens"][:, :-1], batch["positions"][:, :-1],
                        batch["segment_ids"][:, :-1])["params"]
    _, sums = NextTokenLM()(params, None, model, jax.tree_util.tree_map(jax.numpy.asarray, lm_batch(batch)), None)
    nll, count = sums["loss"], sums["weight"]
    segments = batch["segment_ids"]
    assert int(count) == int(((segments[:, 1:] == segments[:, :-1]) & (segments[:, :-1] != 0)).sum())
    assert int(count) < segments[:, 1:].size and np.isfinite(float(nll))


# ---- mixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> tuple[Path, Path]:
    """Two datasets with one shared tokenizer (GPT-2 BPE): A holds only 'alpha' words, B only 'omega' words."""
    root = tmp_path_factory.mktemp("mixture")
    shutil.copy(FIXTURES / "gpt2" / "gpt2_vocab.json", root / "vocab.json")
    shutil.copy(FIXTURES / "gpt2" / "gpt2_merges.txt", root / "merges.txt")
    config = raw(tokenizer="gpt2_bpe", tokenizer_dir=str(root), val_fraction=0.3)
    a = prepare_texts(root / "a", [" ".join(["alpha"] * (20 + i)) for i in range(30)], config)
    b = prepare_texts(root / "b", [" ".join(["omega"] * (20 + i)) for i in range(30)], config)
    return a, b


def test_mixture_rows_follow_the_weights_exactly():
    counts = np.zeros(3, np.int64)
    for step in range(200):
        components, indices = loader.mixture_rows(step, 12, (MixtureStage(0, (0.5, 0.3, 0.2)),), seed=0)
        counts += np.bincount(components, minlength=3)
        assert len(components) == 12
    assert counts.tolist() == [1200, 720, 480]
    components, indices = loader.mixture_rows(7, 10, (MixtureStage(0, (2.0, 1.0)),), seed=0)
    assert sorted(indices[components == 0].tolist()) == list(range(46, 53))


def test_mixture_samples_in_proportion_to_weights(two_datasets):
    a, b = two_datasets
    data = DataConfig(dataset="", mixture=(f"{a}:0.7", f"{b}:0.3"))
    assert resolve_data(data) == a
    ids = {name: set(np.concatenate(documents(path)).tolist()) for name, path in (("a", a), ("b", b))}
    rows = np.concatenate(take(loader.train_iterator(a, 8, 10, seed=0, n_steps=50, data=data), 50))
    from_a = sum(bool(set(row.tolist()) & ids["a"] - ids["b"]) for row in rows)
    from_b = sum(bool(set(row.tolist()) & ids["b"] - ids["a"]) for row in rows)
    assert from_a + from_b == 500 and from_a == 350, (from_a, from_b)
    packed_rows = take(loader.train_iterator(a, 8, 10, seed=0, n_steps=20,
                                             data=dataclasses.replace(data, packing=True)), 20)
    assert all(batch["tokens"].shape == (10, 9) for batch in packed_rows)


def test_mixture_of_different_tokenizers_is_a_clear_error(two_datasets, varied):
    a, _ = two_datasets
    with pytest.raises(GptjaxError, match="different tokenizers"):
        loader.train_iterator(a, 8, 4, seed=0, n_steps=1,
                              data=DataConfig(dataset="", mixture=(f"{a}:1", f"{varied}:1")))
    with pytest.raises(GptjaxError, match="positive weight"):
        resolve_data(DataConfig(dataset="", mixture=(f"{a}:0",)))


def test_grain_worker_processes_give_the_same_batches(two_datasets):
    a, b = two_datasets
    data = DataConfig(dataset="", mixture=(f"{a}:0.6", f"{b}:0.4"), packing=True)
    in_process = take(loader.train_iterator(a, 8, 4, seed=2, n_steps=12, data=data), 12)
    workers = loader.train_iterator(a, 8, 4, seed=2, n_steps=12, data=dataclasses.replace(data, workers=2))
    from_workers = take(workers, 5)
    state = workers.get_state()
    resumed = loader.train_iterator(a, 8, 4, seed=2, n_steps=12, data=dataclasses.replace(data, workers=2))
    resumed.set_state(state)
    from_workers += take(resumed, 7)
    for x, y in zip(in_process, from_workers):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


# ---- prepare -> train ----------------------------------------------------------------------------------------


def test_prepare_then_train_lowers_the_loss(tmp_path, cache_dir):
    from gptjax.train.loop import train

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in PARAGRAPHS))
    cleaned = PrepareConfig(normalize=True, quality=True, dedup="near", max_doc_bytes=32 << 20)
    run_pipeline([str(tmp_path / "in")], tmp_path / "data", DataConfig(dataset="", prepare=cleaned),
                 show_progress=False)
    cfg = tiny_config(cache_dir, train={"steps": 30, "eval_every": 30})
    cfg = dataclasses.replace(cfg, data=DataConfig(dataset="", path=str(tmp_path / "data"), cache_dir=str(cache_dir)))
    summary = train(cfg, tmp_path / "run", show_progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert summary["step"] == 30 and np.isfinite(summary["val_loss"])
    assert np.mean(losses[-5:]) < losses[0] - 0.5, losses
