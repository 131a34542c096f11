"""The model: causality, mask definitions, every switch trains, scan/remat equivalence, kernels, padded vocab."""
from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config, tiny_model

from gptjax.config import ATTENTION_PATTERNS, POSITIONS
from gptjax.errors import GptjaxError
from gptjax.model import attention
from gptjax.model.transformer import PADDED_LOGIT, Transformer
from gptjax.train.objectives import NextTokenLM, lm_batch
from gptjax.train.optim import make_optimizer
from gptjax.train.state import TrainState
from gptjax.train.step import train_step


def init(cfg, seed=0, length=16):
    return Transformer(cfg).init(jax.random.PRNGKey(seed), jnp.zeros((1, length), jnp.int32))["params"]


@pytest.mark.parametrize("pattern,position", list(itertools.product(ATTENTION_PATTERNS, POSITIONS)))
def test_changing_a_token_never_changes_earlier_logits(pattern, position):
    cfg = tiny_model(attention=pattern, position=position)
    model = Transformer(cfg)
    params = nn.unbox(init(cfg))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, cfg.vocab_size)
    base = model.apply({"params": params}, tokens)
    for t in (3, 9, 15):
        changed = tokens.at[:, t].set((tokens[:, t] + 1) % cfg.vocab_size)
        out = model.apply({"params": params}, changed)
        np.testing.assert_array_equal(np.asarray(out[:, :t]), np.asarray(base[:, :t]))
        assert not np.allclose(np.asarray(out[:, t]), np.asarray(base[:, t]))


def brute_force_allowed(pattern: str, i: int, j: int, window: int, stride: int) -> bool:
    if j > i:
        return False
    if pattern == "local":
        return i - j < window
    if pattern == "strided":
        return j // stride == i // stride or j % stride == stride - 1
    return True


@pytest.mark.parametrize("pattern", ATTENTION_PATTERNS)
@pytest.mark.parametrize("window,stride", [(1, 1), (3, 4), (5, 3), (16, 16)])
def test_masks_equal_their_definition(pattern, window, stride):
    cfg = tiny_model(attention=pattern, window=window, stride=stride)
    length = 23
    pos = jnp.arange(length)[None]
    seg = jnp.ones((1, length), jnp.int32)
    mask = np.asarray(attention.attention_mask(pos, pos, seg, seg, cfg))[0]
    expected = np.array([[brute_force_allowed(pattern, i, j, window, stride) for j in range(length)]
                         for i in range(length)])
    np.testing.assert_array_equal(mask, expected)


def test_segments_never_attend_across_documents():
    cfg = tiny_model()
    pos = jnp.array([[0, 1, 2, 0, 1, 2]])
    seg = jnp.array([[1, 1, 1, 2, 2, 2]])
    mask = np.asarray(attention.attention_mask(pos, pos, seg, seg, cfg))[0]
    assert not mask[3:, :3].any() and not mask[:3, 3:].any()
    assert mask[4, 3] and mask[1, 0]


SWITCHES = [
    {}, {"norm": "rmsnorm"}, {"norm_placement": "post"}, {"position": "sinusoidal"}, {"position": "rope"},
    {"position": "rope", "rope_theta": 500000.0}, {"position": "alibi"}, {"position": "none"}, {"mlp": "swiglu"},
    {"n_kv_head": 2}, {"n_kv_head": 1}, {"attention": "local"}, {"attention": "strided"}, {"use_bias": False},
    {"tie_embeddings": False}, {"dropout": 0.1}, {"scan_layers": True}, {"remat": "full"},
    {"scan_layers": True, "remat": "save_dots"}, {"remat": "save_attn_out"}, {"dtype": "bfloat16"},
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "default")
def test_every_switch_trains_and_loss_decreases(switch, cache_dir):
    cfg = tiny_config(cache_dir, model={"vocab_size": 66, **switch}, train={"lr": 1e-2, "warmup_steps": 0, "steps": 25})
    model = Transformer(cfg.model)
    optimizer = make_optimizer(cfg.train)
    params = nn.unbox(init(cfg.model))
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jax.random.PRNGKey(0))
    batch = lm_batch(np.asarray(jax.random.randint(jax.random.PRNGKey(2), (8, 17), 0, 65)))
    step = jax.jit(functools.partial(train_step, model=model, optimizer=optimizer, objective=NextTokenLM(), cfg=cfg))
    losses = []
    for _ in range(25):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses


def test_dropout_mask_is_an_unbiased_independent_bernoulli():
    """The hash-based mask: keep rate, per-seed spread and neighbour correlation of a true Bernoulli(1 - rate)."""
    from gptjax.model.layers import dropout, dropout_keep_mask

    n, rate, seeds = 1 << 20, 0.2, 16
    fractions, correlations = [], []
    for seed in range(seeds):
        keep = np.asarray(dropout_keep_mask(jax.random.PRNGKey(seed), rate, (16, 4, 128, 128))).ravel()
        assert keep.size == n
        fractions.append(keep.mean())
        correlations.append(np.corrcoef(keep[:-1], keep[1:])[0, 1])
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(np.mean(fractions) - (1 - rate)) < 4 * sigma / np.sqrt(seeds)
    assert 0.5 * sigma < np.std(fractions) < 2 * sigma
    assert abs(np.mean(correlations)) < 4 / np.sqrt(n * seeds)
    first = np.asarray(dropout_keep_mask(jax.random.PRNGKey(0), rate, (64, 64)))
    assert (first == np.asarray(dropout_keep_mask(jax.random.PRNGKey(0), rate, (64, 64)))).all()
    assert (first != np.asarray(dropout_keep_mask(jax.random.PRNGKey(1), rate, (64, 64)))).any()
    x = jnp.ones((256, 256))
    y = np.asarray(dropout(x, rate, jax.random.PRNGKey(3)))
    assert set(np.unique(y).tolist()) == {0.0, 1.0 / (1 - rate)}


def _stack_layers(params: dict, n_layer: int) -> dict:
    layers = [params.pop(f"layer_{i}") for i in range(n_layer)]
    params["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    return params


def test_scan_over_layers_computes_the_same_function():
    cfg = tiny_model(position="rope", mlp="swiglu", n_kv_head=2)
    params = nn.unbox(init(cfg))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, cfg.vocab_size)
    expected = Transformer(cfg).apply({"params": params}, tokens)
    scan_cfg = tiny_model(position="rope", mlp="swiglu", n_kv_head=2, scan_layers=True)
    stacked = _stack_layers(dict(params), cfg.n_layer)
    got = Transformer(scan_cfg).apply({"params": stacked}, tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "save_dots", "save_attn_out"])
def test_remat_leaves_gradients_unchanged(policy):
    cfg = tiny_model()
    params = nn.unbox(init(cfg))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, cfg.vocab_size)

    def loss(model_cfg, p):
        return Transformer(model_cfg).apply({"params": p}, tokens).astype(jnp.float32).std()

    g_plain = jax.grad(functools.partial(loss, cfg))(params)
    g_remat = jax.grad(functools.partial(loss, tiny_model(remat=policy)))(params)
    for a, b in zip(jax.tree_util.tree_leaves(g_plain), jax.tree_util.tree_leaves(g_remat)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_padded_vocabulary_is_masked_and_never_in_the_loss():
    cfg = tiny_model(vocab_size=66)
    assert cfg.padded_vocab == 128
    logits = Transformer(cfg).apply({"params": nn.unbox(init(cfg))}, jnp.zeros((1, 16), jnp.int32))
    assert np.all(np.asarray(logits[..., 66:]) == PADDED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1)
    assert float(probs[..., 66:].sum()) < 1e-30


def test_gpt2_init_scales_residual_projections():
    cfg = tiny_model(n_layer=8, d_model=64, init_std=0.02)
    params = nn.unbox(init(cfg))
    proj = np.asarray(params["layer_0"]["mlp"]["proj"]["kernel"])
    fc = np.asarray(params["layer_0"]["mlp"]["fc"]["kernel"])
    assert abs(fc.std() - 0.02) < 0.002
    assert abs(proj.std() - 0.02 / np.sqrt(16)) < 0.001


def test_params_carry_logical_axis_names():
    boxed = init(tiny_model(tie_embeddings=False))
    specs = nn.get_partition_spec(boxed)
    assert specs["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
    assert specs["layer_0"]["attn"]["query"]["kernel"] == jax.sharding.PartitionSpec("embed", "heads", "head_dim")
    assert specs["layer_0"]["mlp"]["proj"]["kernel"] == jax.sharding.PartitionSpec("mlp", "embed")
    assert specs["lm_head"] == jax.sharding.PartitionSpec("embed", "vocab")


def _qkv(n_heads=4, kv_heads=2, length=32, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(keys[0], (2, length, n_heads, 16), dtype)
    k = jax.random.normal(keys[1], (2, length, kv_heads, 16), dtype)
    v = jax.random.normal(keys[2], (2, length, kv_heads, 16), dtype)
    return q, k, v


@pytest.mark.parametrize("pattern", ["dense", "local"])
def test_fused_attention_path_equals_reference(pattern):
    """The cudnn code path through jax.nn.dot_product_attention (run with its XLA backend on CPU) = xla_attention."""
    cfg = tiny_model(attention=pattern, window=7, n_kv_head=2)
    q, k, v = _qkv()
    pos = jnp.broadcast_to(jnp.arange(32), (2, 32))
    seg = jnp.ones((2, 32), jnp.int32)
    reference = attention.xla_attention(q, k, v, attention.attention_mask(pos, pos, seg, seg, cfg))
    fused = attention.cudnn_attention(q, k, v, cfg, implementation="xla")
    np.testing.assert_allclose(np.asarray(fused), np.asarray(reference), atol=2e-5)


def test_splash_attention_equals_reference_in_interpret_mode():
    cfg = tiny_model(attention="strided", stride=128, n_head=2, n_kv_head=1, d_model=256)
    q, k, v = _qkv(n_heads=2, kv_heads=1, length=256)
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), x.shape[:-1] + (128,)) for i, x in enumerate((q, k, v)))
    pos = jnp.broadcast_to(jnp.arange(256), (2, 256))
    seg = jnp.ones((2, 256), jnp.int32)
    reference = attention.xla_attention(q, k, v, attention.attention_mask(pos, pos, seg, seg, cfg))
    got = attention.splash_attention(q, k, v, cfg, interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(reference), atol=1e-4)


def test_kernel_choice_errors_clearly_and_auto_falls_back():
    choose = functools.partial(attention.choose_kernel, length=128, decoding=False, dropout=False, packed=False)
    with pytest.raises(GptjaxError, match="attention_impl='cudnn' needs a GPU, the target platform is cpu"):
        choose(tiny_model(attention_impl="cudnn"))
    with pytest.raises(GptjaxError, match="splash"):
        choose(tiny_model(attention_impl="splash"))
    assert choose(tiny_model(attention_impl="auto")) == "xla"


def _dot_operand_dtypes(jaxpr) -> list[tuple[str, str]]:
    """The operand dtypes of every dot_general in `jaxpr`, nested jaxprs (custom_vjp, pjit) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", None)
            if inner is not None:
                found += _dot_operand_dtypes(getattr(inner, "jaxpr", inner))
    return found


def test_bf16_matmul_gradients_run_bf16_dots_with_float32_results():
    """einsum_f32 on CPU: all three GEMMs of a bf16 layer take bf16 operands (XLA's CPU backend runs a dot with a
    float32 cotangent operand as a float32 GEMM), the kernel's gradient comes back float32, close to the float32
    layer's; at float32 it is exactly jnp.dot."""
    from gptjax.model.layers import einsum_f32

    x = jax.random.normal(jax.random.key(0), (64, 48))
    w = jax.random.normal(jax.random.key(1), (48, 32)) * 0.1

    def loss(x, w, dtype):
        y = einsum_f32("mk,kn->mn", x, w, dtype).astype(dtype)
        return jnp.sum(jnp.tanh(y.astype(jnp.float32)) ** 2)

    grad = jax.grad(loss, argnums=(0, 1))
    exact = grad(x, w, jnp.float32)
    reference = jax.grad(lambda x, w: jnp.sum(jnp.tanh(jnp.dot(x, w)) ** 2), argnums=(0, 1))(x, w)
    assert all(np.array_equal(a, b) for a, b in zip(exact, reference))
    assert np.array_equal(einsum_f32("mk,kn->mn", x, w, jnp.float32), jnp.dot(x, w))

    low = grad(x, w, jnp.bfloat16)
    assert [g.dtype for g in low] == [jnp.float32, jnp.float32]
    for g, r in zip(low, reference):
        assert float(jnp.abs(g - r).max()) < 0.03 * float(jnp.abs(r).max())
    dots = _dot_operand_dtypes(jax.make_jaxpr(grad, static_argnums=2)(x, w, jnp.bfloat16).jaxpr)
    assert len(dots) == 3 and all(pair == ("bfloat16", "bfloat16") for pair in dots), dots
