"""Generation: KV-cache decoding equals full recompute, token for token; sampling controls; stopping."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model

from gptjax.errors import GptjaxError
from gptjax.generate import SamplingParams, generate_ids, sample
from gptjax.model.transformer import Transformer


def make(cfg, seed=0):
    params = nn.unbox(Transformer(cfg).init(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32))["params"])
    # sharper distributions than init gives, so greedy paths are not decided by float noise
    params = jax.tree_util.tree_map(lambda p: p * 4.0 if p.ndim >= 2 else p, params)
    return Transformer(cfg), params


def recompute_greedy(model, params, prompt, n_new, window=None):
    """Reference: run the whole sequence (cropped to `window`) each step and take the argmax at its last token.

    The sequence is padded at its end to one width, so one compiled forward serves every step: attention is causal,
    so the padding after the last real token never reaches that token's logits."""
    width = window or model.cfg.block_size
    forward = jax.jit(lambda tokens_BT: model.apply({"params": params}, tokens_BT))
    seq = list(prompt)
    for _ in range(n_new):
        context = seq[-window:] if window else seq
        tokens_1T = np.zeros((1, width), np.int32)
        tokens_1T[0, :len(context)] = context
        logits = forward(jnp.asarray(tokens_1T))
        seq.append(int(jnp.argmax(logits[0, len(context) - 1])))
    return seq[len(prompt):]


CASES = [dict(position=p) for p in ("learned", "sinusoidal", "rope", "alibi", "none")] + [
    dict(position="rope", attention="local", window=4), dict(position="learned", attention="strided", stride=4),
    dict(position="rope", n_kv_head=1, mlp="swiglu", norm="rmsnorm"), dict(norm_placement="post", n_kv_head=2),
    dict(scan_layers=True, position="alibi", attention="local", window=3),
    # the switches of the 2024-26 families (Qwen3, Gemma 2/3, Llama 3, YaRN)
    dict(position="rope", qk_norm=True, d_head=8, attn_softcap=2.0, logit_softcap=5.0, query_scale_dim=12),
    dict(position="rope", norm="rmsnorm", mlp="geglu", norm_offset=True, embed_scale=True, sandwich_norm=True,
         layer_pattern="LG", window=4, rope_local_theta=100.0, rope_scaling="linear", rope_factor=4.0),
    dict(scan_layers=True, position="rope", layer_pattern="GL", window=3, rope_scaling="yarn", rope_factor=4.0,
         rope_original_positions=8, qkv_bias=True, use_bias=False),
    dict(position="rope", rope_scaling="llama3", rope_factor=8.0, rope_original_positions=8),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_kv_cache_greedy_equals_full_recompute(case):
    cfg = tiny_model(block_size=32, **case)
    model, params = make(cfg)
    prompts = [[5, 9, 2, 7, 1, 3, 8], [11, 4], [6, 6, 6, 2, 9]]
    got = generate_ids(model, params, prompts, max_new_tokens=18, eot_id=65, sp=SamplingParams(temperature=0.0),
                       chunk=5)
    for prompt, ids in zip(prompts, got):
        expected = recompute_greedy(model, params, prompt, 18)
        if 65 in expected:
            expected = expected[: expected.index(65)]
        assert ids == expected


def test_past_the_position_limit_decoding_slides_a_window_like_nanogpt():
    cfg = tiny_model(block_size=16, position="learned")
    model, params = make(cfg)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]]
    got = generate_ids(model, params, prompts, max_new_tokens=30, eot_id=65, sp=SamplingParams(temperature=0.0))
    for prompt, ids in zip(prompts, got):
        expected = recompute_greedy(model, params, prompt, 30, window=16)
        if 65 in expected:
            expected = expected[: expected.index(65)]
        assert ids == expected


def test_stops_at_end_of_text():
    cfg = tiny_model(block_size=32)
    model, params = make(cfg)
    free = generate_ids(model, params, [[1, 2, 3]], 20, eot_id=10_000, sp=SamplingParams(temperature=0.0))[0]
    stop_token = free[4]
    stopped = generate_ids(model, params, [[1, 2, 3]], 20, eot_id=stop_token, sp=SamplingParams(temperature=0.0))[0]
    assert stopped == free[: free.index(stop_token)]


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    cfg = tiny_model(block_size=32)
    model, params = make(cfg)
    prompts = [[1, 2, 3], [7]]
    greedy = generate_ids(model, params, prompts, 12, eot_id=65, sp=SamplingParams(0.0))
    top1 = generate_ids(model, params, prompts, 12, eot_id=65, sp=SamplingParams(1.0, top_k=1), seed=3)
    assert top1 == greedy
    a = generate_ids(model, params, prompts, 12, eot_id=65, sp=SamplingParams(1.5), seed=1)
    b = generate_ids(model, params, prompts, 12, eot_id=65, sp=SamplingParams(1.5), seed=1)
    c = generate_ids(model, params, prompts, 12, eot_id=65, sp=SamplingParams(1.5), seed=2)
    assert a == b and a != c


def test_top_k_and_top_p_filter_the_distribution():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    draw = lambda sp: np.array([int(sample(logits, k, sp)[0]) for k in keys[:400]])
    assert set(draw(SamplingParams(1.0, top_k=2))) == {0, 1}
    assert set(draw(SamplingParams(1.0, top_p=0.7))) == {0, 1}
    assert set(draw(SamplingParams(1.0, top_p=0.5))) == {0}
    assert set(draw(SamplingParams(1.0))) == {0, 1, 2, 3}


def test_padded_vocabulary_is_never_sampled():
    cfg = tiny_model(vocab_size=66, block_size=64)
    model, params = make(cfg)
    ids = generate_ids(model, params, [[1]] * 8, 40, eot_id=10_000, sp=SamplingParams(temperature=50.0), seed=0)
    assert max(max(r) for r in ids) < 66


def test_generate_ids_refuses_ids_and_sampling_out_of_range_before_decoding():
    cfg = tiny_model(block_size=32)
    model, params = make(cfg)
    with pytest.raises(GptjaxError, match=r"token id 66 at position 1 of sequence 1 .*\[0, 66\)"):
        generate_ids(model, params, [[1, 2], [3, 66]], 4, eot_id=65)
    with pytest.raises(GptjaxError, match=r"top_k=-2 must be >= 0"):
        generate_ids(model, params, [[1, 2]], 4, eot_id=65, sp=SamplingParams(1.0, top_k=-2))


BF16_CASES = [dict(position="learned"), dict(position="rope", n_kv_head=1, mlp="swiglu", norm="rmsnorm"),
              dict(position="alibi", attention="local", window=4), dict(scan_layers=True, position="rope", n_kv_head=2)]


@pytest.mark.parametrize("case", BF16_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_bf16_weights_kv_cache_greedy_equals_full_recompute(case):
    cfg = tiny_model(block_size=32, dtype="bfloat16", **case)
    model, params = make(cfg)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
    prompts = [[5, 9, 2, 7, 1, 3, 8], [11, 4]]
    got = generate_ids(model, params, prompts, max_new_tokens=14, eot_id=10_000, sp=SamplingParams(temperature=0.0),
                       chunk=5)
    for prompt, ids in zip(prompts, got):
        assert ids == recompute_greedy(model, params, prompt, 14)


def test_with_dtype_bfloat16_halves_the_weights_and_mostly_keeps_greedy_tokens(monkeypatch, capsys):
    from gptjax import api, cli
    from gptjax.config import Config

    cfg = tiny_model(block_size=48)
    _, params = make(cfg)
    lm = api.LM(Config(name="bf16-test", model=cfg), params, None)
    half = lm.with_dtype("bfloat16")
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))
    assert nbytes(half.params) * 2 == nbytes(lm.params) and half.config.dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(half.params))
    assert lm.config.dtype == "float32"  # the original is unchanged
    prompts = [[5, 9, 2, 7], [11, 4], [1, 2, 3, 4, 5, 6]]
    full = lm.generate_ids(prompts, 24, temperature=0.0)
    bf16 = half.generate_ids(prompts, 24, temperature=0.0)
    # the first greedy token is decided by clear margins here; later ones follow their own (possibly other) prefix
    assert [r[0] for r in bf16] == [r[0] for r in full]
    with pytest.raises(GptjaxError, match=r"dtype 'float16' is not one of float32, bfloat16"):
        lm.with_dtype("float16")
    with pytest.raises(GptjaxError, match=r"dtype 'int8'"):
        api.load("/nonexistent", dtype="int8")
    loaded = []
    monkeypatch.setattr(api, "load", lambda path, step=None: lm)
    monkeypatch.setattr(api.LM, "with_dtype", lambda self, dtype: loaded.append(dtype) or half)
    assert cli.main(["generate", "--workdir", "unused", "--dtype", "bfloat16", "--max-new-tokens", "2"]) != 0
    assert loaded == ["bfloat16"] and "needs a tokenizer" in capsys.readouterr().err  # got to generating
