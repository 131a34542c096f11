"""Training pieces: gradient accumulation, schedules, weight-decay mask, and a CLI end to end."""
from __future__ import annotations

import functools
import json
import math
from dataclasses import replace
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, run_cli, tiny_config, tiny_overrides

from gptjax.config import TrainConfig
from gptjax.model.transformer import Transformer
from gptjax.train.objectives import NextTokenLM, lm_batch
from gptjax.train.optim import decay_mask, lr_schedule, make_optimizer
from gptjax.train.state import TrainState
from gptjax.train.step import train_step

REPO_DATA = REPO / "gptjax" / "data" / "bundled"


@pytest.mark.parametrize("packed", [False, True])
def test_k_microbatches_equal_one_batch_k_times_larger(cache_dir, packed):
    results = []
    batch = jax.random.randint(jax.random.PRNGKey(0), (8, 17), 0, 65)
    if packed:
        segments = jnp.concatenate([jnp.ones((8, 9), jnp.int32), 2 * jnp.ones((8, 6), jnp.int32),
                                    jnp.zeros((8, 2), jnp.int32)], axis=1)
        positions = jnp.concatenate([jnp.arange(9), jnp.arange(6), jnp.zeros(2, jnp.int32)])[None].repeat(8, 0)
        batch = {"tokens": batch, "segment_ids": segments, "positions": positions}
    for accum in (1, 4):
        cfg = tiny_config(cache_dir, model={"vocab_size": 66}, train={"grad_accum": accum})
        model, opt = Transformer(cfg.model), make_optimizer(cfg.train)
        params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32))["params"])
        state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params), jax.random.PRNGKey(1))
        step = jax.jit(functools.partial(train_step, model=model, optimizer=opt, objective=NextTokenLM(), cfg=cfg))
        state, metrics = step(state, lm_batch(jax.tree_util.tree_map(np.asarray, batch)))
        results.append((state, metrics))
    (s1, m1), (s4, m4) = results
    assert abs(float(m1["loss"]) - float(m4["loss"])) < 1e-5
    assert abs(float(m1["grad_norm"]) - float(m4["grad_norm"])) < 1e-5
    # Adam's first update is ~lr*sign(g): where g is ~0, float noise in g moves a weight by up to ~lr/100.
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s4.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=3e-5)
    g1, g4 = (jax.tree_util.tree_leaves(s.opt_state[1][0].mu) for s in (s1, s4))  # first moment = (1-b1)*grad
    for a, b in zip(g1, g4):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)


def test_cosine_schedule_matches_nanogpt():
    t = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, steps=2000, decay_steps=2000)

    def nanogpt(it):
        if it < 100:
            return 1e-3 * (it + 1) / (100 + 1)
        if it > 2000:
            return 1e-4
        ratio = (it - 100) / (2000 - 100)
        return 1e-4 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    schedule = lr_schedule(t)
    for it in (0, 50, 99, 100, 500, 1000, 1999, 2000):
        assert abs(float(schedule(it)) - nanogpt(it)) < 1e-9


def test_wsd_schedule_is_flat_then_decays():
    schedule = lr_schedule(TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10, steps=100, schedule="wsd", decay_steps=20))
    assert float(schedule(50)) == 1.0 and float(schedule(80)) == 1.0
    assert abs(float(schedule(90)) - 0.5) < 1e-6 and float(schedule(100)) == 0.0


def test_weight_decay_only_on_matrices():
    params = {"w": jnp.ones((3, 3)), "b": jnp.ones((3,)), "norm": {"scale": jnp.ones((3,))}}
    assert decay_mask(params) == {"w": True, "b": False, "norm": {"scale": False}}


def test_cli_train_eval_generate_end_to_end(tmp_path, cache_dir):
    import gptjax
    from gptjax.data import store

    workdir = tmp_path / "run"
    train = run_cli(["train", "--config", "experiments/shakespeare_char_cpu.py", "--workdir", str(workdir),
                     *tiny_overrides(steps=30)])
    assert train.returncode == 0, train.stderr[-2000:]
    summary = json.loads(train.stdout.strip().splitlines()[-1])
    first_loss = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert first_loss > 4.0  # untrained: about ln(65) = 4.17
    assert summary["step"] == 30 and summary["val_loss"] < 3.85, summary
    for name in ("config.json", "record.json", "metrics.jsonl", "tokenizer/tokenizer.json"):
        assert (workdir / name).is_file()
    record = json.loads((workdir / "record.json").read_text())
    assert {"git_commit", "packages", "mesh", "device_kinds", "command"} <= set(record)
    evaluated = run_cli(["eval", "--workdir", str(workdir), "--max-tokens", "2000", "--out", str(workdir / "ev.json")])
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert json.loads((workdir / "ev.json").read_text()) == result, "--out holds what was printed"
    # The same loss computed independently: numpy log-softmax of the model's logits over consecutive windows.
    lm = gptjax.load(workdir)
    data_dir = Path(lm.meta["data_dir"])
    tokens = np.concatenate([store.read_tokens(p) for p in store.split_shards(data_dir, "val")])[:2001].astype(np.int64)
    block = lm.config.block_size
    windows = np.stack([tokens[i * block: i * block + block + 1] for i in range((len(tokens) - 1) // block)])
    logits = lm.logits(windows[:, :-1]).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(log_probs, windows[:, 1:, None], axis=-1).mean()
    assert result["tokens"] == windows[:, 1:].size
    assert abs(result["loss"] - nll) < 1e-5 and abs(result["ppl"] - math.exp(nll)) < 1e-3
    split = store.read_manifest(data_dir)["splits"]["val"]
    assert abs(result["bpb"] - nll / math.log(2) * split["n_tokens"] / split["n_bytes"]) < 1e-5
    sample = run_cli(["generate", "--workdir", str(workdir), "--prompt", "ROMEO:", "--max-new-tokens", "40"])
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert sample.stdout.startswith("ROMEO:") and len(sample.stdout.strip()) > 20


def test_python_api_scores_and_generates(tmp_path, cache_dir):
    import gptjax
    from gptjax.train.loop import train

    train(tiny_config(cache_dir, train={"steps": 10}), tmp_path / "run", show_progress=False)
    lm = gptjax.load(tmp_path / "run")
    assert lm.tokenizer.decode(lm.tokenizer.encode("To be, or not")) == "To be, or not"
    ids = lm.tokenizer.encode("First Citizen:")
    logits = lm.logits([ids])
    assert logits.shape == (1, len(ids), lm.tokenizer.vocab_size)
    scores = lm.score(["the king", "zqxj zqxj"])
    assert scores.shape == (2,) and scores[0] > scores[1]
    manual = jax.nn.log_softmax(lm.logits([[lm.tokenizer.eot_id] + lm.tokenizer.encode("ab")])[0], axis=-1)
    expected = manual[0, lm.tokenizer.encode("a")[0]] + manual[1, lm.tokenizer.encode("b")[0]]
    assert abs(float(lm.score(["ab"])[0]) - float(expected)) < 1e-4
    out = lm.generate(["ROMEO:", "A"], max_new_tokens=10, temperature=0.0)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_training_on_packed_documents_and_a_mixture(tmp_path, cache_dir):
    """prepare -> train with data.packing (segment ids reach the model) and a weighted mixture of two datasets."""
    from gptjax.cli import main as cli_main
    from gptjax.train.loop import train

    text = (REPO_DATA / "tinyshakespeare.txt").read_text()
    paragraphs = [p for p in text.split("\n\n") if len(p) > 200]
    for name, part in (("a", paragraphs[:300]), ("b", paragraphs[150:300])):
        folder = tmp_path / f"docs_{name}"
        folder.mkdir()
        for i, para in enumerate(part):
            (folder / f"{i:04d}.txt").write_text(para)
    common = ["--raw", "--tokenizer", "char", "--quiet", "--workers", "1"]
    assert cli_main(["prepare", "--input", str(tmp_path / "docs_a"), "--out", str(tmp_path / "data_a"), *common]) == 0
    assert cli_main(["prepare", "--input", str(tmp_path / "docs_b"), "--out", str(tmp_path / "data_b"), *common,
                     "--tokenizer-dir", str(tmp_path / "data_a" / "tokenizer")]) == 0
    cfg = tiny_config(cache_dir, train={"steps": 30, "grad_accum": 2, "lr": 3e-3})
    packed = replace(cfg, data=replace(cfg.data, dataset="", path=str(tmp_path / "data_a"), packing=True))
    result = train(packed, tmp_path / "run_packed", show_progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run_packed" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    assert np.isfinite(result["val_loss"])
    mixed = replace(cfg, data=replace(cfg.data, dataset="", mixture=(f"{tmp_path / 'data_a'}:0.7",
                                                                    f"{tmp_path / 'data_b'}:0.3")))
    result = train(mixed, tmp_path / "run_mixture", show_progress=False)
    assert result["step"] == 30 and result["loss"] < 3.5


def test_quickstart_trains_evaluates_and_samples(tmp_path, cache_dir):
    proc = run_cli(["quickstart", "--workdir", str(tmp_path / "qs"), "--steps", "20", "--sample-tokens", "30"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "val loss" in proc.stdout and "perplexity" in proc.stdout and "sample" in proc.stdout
    sample = proc.stdout.split("-" * 40)[1]
    assert len(sample.strip()) > 5
