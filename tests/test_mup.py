"""μP (model.parametrization=mup): SP at its base width bit for bit, a coordinate check over widths, the per-leaf
Adam learning rates, the init and attention scales, and the kernels that take the scale."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config, tiny_model

from gptjax.config import TrainConfig
from gptjax.errors import GptjaxError
from gptjax.model import attention
from gptjax.model.losses import token_nll
from gptjax.model.mup import adam_lr_multipliers, attention_scale, lr_multiplier_tree, width_multiplier
from gptjax.model.transformer import Transformer, head_logits
from gptjax.parallel.mesh import make_mesh
from gptjax.train.optim import make_optimizer
from gptjax.train.step import build_step

VOCAB = 64  # the coordinate check's vocabulary (padded to 128)


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def init_params(cfg, seed: int = 0, length: int = 8):
    return nn.unbox(Transformer(cfg).init(jax.random.PRNGKey(seed), jnp.zeros((1, length), jnp.int32))["params"])


def test_mup_at_its_base_width_is_sp_bit_for_bit(cache_dir):
    """Same init, same logits, same updates through build_step (the trainer's wiring of the lr multipliers)."""
    sp = tiny_config(cache_dir, model={"vocab_size": 66}, train={"warmup_steps": 0, "lr": 1e-2})
    mup = dataclasses.replace(sp, model=dataclasses.replace(sp.model, parametrization="mup", mup_base_width=32))
    assert width_multiplier(mup.model) == 1.0
    assert width_multiplier(dataclasses.replace(mup.model, mup_base_width=0)) == 1.0
    tokens = np.random.default_rng(0).integers(0, 65, (8, 17), dtype=np.int32)
    results = []
    for cfg in (sp, mup):
        step = build_step(cfg, make_mesh(cfg.mesh))
        state = step.init_state()
        start = flat(state.params)
        logits = np.asarray(step.model.apply({"params": state.params}, jnp.asarray(tokens[:, :-1])))
        for _ in range(2):
            state, _ = step.train(state, step.to_global(step.format_batch(tokens)))
        results.append((start, logits, flat(state.params)))
    (sp_start, sp_logits, sp_end), (mup_start, mup_logits, mup_end) = results
    for name in sp_start:
        np.testing.assert_array_equal(mup_start[name], sp_start[name], err_msg=name)
        np.testing.assert_array_equal(mup_end[name], sp_end[name], err_msg=name)
    np.testing.assert_array_equal(mup_logits, sp_logits)


def wide(parametrization: str, width: int, base: int = 32, **overrides):
    return tiny_model(vocab_size=VOCAB, d_model=width, parametrization=parametrization, mup_base_width=base,
                      **overrides)


def test_the_lr_multipliers_land_on_the_hidden_matrices_only():
    """m = 4: Dense kernels (q, k, v, out, fc, proj) get lr/4; embeddings, lm_head, biases and norm gains keep lr."""
    cfg = wide("mup", 128, tie_embeddings=False)
    multipliers = flat(lr_multiplier_tree(cfg, init_params(cfg)))
    hidden = {name for name in multipliers if name.endswith("['kernel']")}
    assert {name.split("]")[-3] for name in hidden} == {"['query'", "['key'", "['value'", "['out'", "['fc'", "['proj'"}
    assert len(hidden) == 6 * cfg.n_layer
    assert {float(multipliers[name]) for name in hidden} == {0.25}
    others = set(multipliers) - hidden
    assert {"['embedding']", "['pos_embedding']", "['lm_head']", "['norm_f']['scale']"} <= others
    assert {float(multipliers[name]) for name in others} == {1.0}
    assert adam_lr_multipliers(wide("sp", 128)) is None


def one_update(optimizer, params, grads) -> dict[str, np.ndarray]:
    return flat(optimizer.update(grads, optimizer.init(params), params)[0])


def random_like(params):
    return jax.tree_util.tree_map(lambda p: jax.random.normal(jax.random.PRNGKey(p.size), p.shape), params)


def assert_hidden_steps_scaled(mup_step: dict, sp_step: dict, hidden_scale: float) -> None:
    for name, value in sp_step.items():
        scale = hidden_scale if name.endswith("['kernel']") else 1.0
        np.testing.assert_allclose(mup_step[name], scale * value, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("frozen", [False, True], ids=["all_trainable", "embedding_frozen"])
def test_muadamw_scales_the_adam_step_by_the_multiplier_and_keeps_the_decay(frozen):
    """One update from the same params and gradients: mup = sp · 1/m on hidden matrices (no decay); with zero
    gradients (decay alone) mup = sp: the decoupled decay stays lr·wd, as MuAdamW's default has it."""
    cfg = wide("mup", 128)
    params = init_params(cfg)
    trainable = jax.tree_util.tree_map(lambda _: True, params) | {"embedding": False} if frozen else None

    def update(weight_decay: float, multipliers, grads):
        t = TrainConfig(lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=weight_decay, grad_clip=0.0)
        return one_update(make_optimizer(t, trainable, multipliers), params, grads)

    grads = random_like(params)
    mup_step, sp_step = (update(0.0, multipliers, grads) for multipliers in (adam_lr_multipliers(cfg), None))
    assert_hidden_steps_scaled(mup_step, sp_step, 0.25)
    if frozen:
        assert not mup_step["['embedding']"].any()
    zeros = jax.tree_util.tree_map(jnp.zeros_like, grads)
    mup_decay, sp_decay = (update(0.1, multipliers, zeros) for multipliers in (adam_lr_multipliers(cfg), None))
    assert np.abs(sp_decay["['layer_0']['mlp']['fc']['kernel']"]).max() > 0
    for name, value in sp_decay.items():
        np.testing.assert_array_equal(mup_decay[name], value, err_msg=name)


def test_build_step_gives_the_trainer_the_mup_lr_multipliers(cache_dir):
    cfg = tiny_config(cache_dir, model={"vocab_size": 66, "d_model": 128, "parametrization": "mup",
                                        "mup_base_width": 32},
                      train={"warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 0.0})
    params = init_params(cfg.model)
    grads = random_like(params)
    trainer_step = one_update(build_step(cfg, make_mesh(cfg.mesh)).optimizer, params, grads)
    assert_hidden_steps_scaled(trainer_step, one_update(make_optimizer(cfg.train), params, grads), 0.25)


def test_hidden_matrices_start_with_std_over_sqrt_m_and_the_rest_as_sp():
    sp, mup = init_params(wide("sp", 128)), init_params(wide("mup", 128))
    for name, value in flat(sp).items():
        scale = 0.5 if name.endswith("['kernel']") else 1.0
        np.testing.assert_allclose(flat(mup)[name], scale * value, rtol=1e-6, err_msg=name)


def test_attention_scale_is_one_over_head_dim_with_the_base_width_equivalence():
    """n_head 4 at base width 32: base head dim 8; at width 128 the head dim is 32 and the scale sqrt(8)/32."""
    np.testing.assert_allclose(attention_scale(32, wide("mup", 128)), np.sqrt(8) / 32, rtol=1e-12)
    assert attention_scale(32, wide("sp", 128)) == 32 ** -0.5
    assert attention_scale(8, wide("mup", 32)) == 8 ** -0.5


def test_the_logits_carry_the_readout_multiplier():
    x_BTD = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 128))
    head_DV = jax.random.normal(jax.random.PRNGKey(1), (128, 128))
    sp, mup = (np.asarray(head_logits(x_BTD, head_DV, wide(p, 128)))[..., :VOCAB] for p in ("sp", "mup"))
    np.testing.assert_allclose(mup, sp / 4, rtol=1e-6)


def test_the_model_gives_xla_attention_the_mup_scale(monkeypatch):
    cfg = wide("mup", 128)
    scales = []

    def spy(q, k, v, mask, bias=None, dropout_rng=None, dropout_rate=0.0, scale=None, cap=0.0):
        scales.append(scale)
        return xla_attention(q, k, v, mask, bias, dropout_rng, dropout_rate, scale, cap)

    xla_attention = attention.xla_attention
    monkeypatch.setattr(attention, "xla_attention", spy)
    init_params(cfg)
    assert scales and set(scales) == {attention_scale(32, cfg)} and attention_scale(32, cfg) != 32 ** -0.5


@pytest.mark.parametrize("kernel", ["cudnn", "splash"])
def test_the_fused_kernels_take_the_mup_scale(kernel):
    """cudnn's code path (jax.nn.dot_product_attention, its XLA backend on CPU) and splash (Pallas interpreter)
    compute xla_attention with μP's scale, not SP's."""
    cfg = tiny_model(n_head=2, n_kv_head=1, d_model=256, parametrization="mup", mup_base_width=64)
    length = 256 if kernel == "splash" else 32
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, length, heads, 128))
               for i, heads in enumerate((2, 1, 1)))
    pos = jnp.broadcast_to(jnp.arange(length), (2, length))
    seg = jnp.ones((2, length), jnp.int32)
    mask = attention.attention_mask(pos, pos, seg, seg, cfg)
    if kernel == "splash":
        got = attention.splash_attention(q, k, v, cfg, interpret=True)
    else:
        got = attention.cudnn_attention(q, k, v, cfg, implementation="xla")
    mup = attention.xla_attention(q, k, v, mask, scale=attention_scale(128, cfg))
    sp = attention.xla_attention(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(mup), atol=1e-4)
    assert np.abs(np.asarray(got) - np.asarray(sp)).max() > 1e-2


def coordinates(cfg, lr: float = 1e-2, steps: int = 4, batch: int = 32, seed: int = 0) -> dict[str, float]:
    """Mean |x| of the output logits, the last block's output and its attention scores after `steps` Adam steps
    (constant lr, no decay, the config's lr multipliers) on uniformly random tokens; init, steps, probe in one jit."""
    model = Transformer(cfg)
    optimizer = make_optimizer(TrainConfig(lr=lr, warmup_steps=0, schedule="constant", weight_decay=0.0),
                               lr_multipliers=adam_lr_multipliers(cfg))
    length = cfg.block_size
    train_SBT = jax.random.randint(jax.random.PRNGKey(seed + 1), (steps, batch, length + 1), 0, VOCAB)
    probe_BT = jax.random.randint(jax.random.PRNGKey(seed + 2), (batch, length), 0, VOCAB)

    def loss(params, tokens_BT1):
        return token_nll(model.apply({"params": params}, tokens_BT1[:, :-1]), tokens_BT1[:, 1:])[0].mean()

    def adam_step(carry, tokens_BT1):
        params, opt_state = carry
        updates, opt_state = optimizer.update(jax.grad(loss)(params, tokens_BT1), opt_state, params)
        return (jax.tree_util.tree_map(jnp.add, params, updates), opt_state), None

    @jax.jit
    def run():
        params = nn.unbox(model.init(jax.random.PRNGKey(seed), probe_BT))["params"]
        (params, _), _ = jax.lax.scan(adam_step, (params, optimizer.init(params)), train_SBT)
        logits_BTV, seen = model.apply({"params": params}, probe_BT, capture_intermediates=True,
                                       mutable=["intermediates"])
        last = seen["intermediates"][f"layer_{cfg.n_layer - 1}"]
        q_BTNK, k_BTNK = last["attn"]["query"]["__call__"][0], last["attn"]["key"]["__call__"][0]
        scores_BNTS = jnp.einsum("btnk,bsnk->bnts", q_BTNK, k_BTNK) * attention_scale(cfg.head_dim, cfg)
        return {"logits": jnp.abs(logits_BTV[..., :VOCAB]).mean(), "hidden": jnp.abs(last["__call__"][0][0]).mean(),
                "attention": jnp.abs(scores_BNTS).mean()}

    return {key: float(value) for key, value in run().items()}


def test_coordinate_check_mup_keeps_activations_flat_over_width_and_sp_does_not():
    """Widths 32..256 (base 32, 4 heads, 2 layers), 4 Adam steps at lr 1e-2 on random tokens, then mean |x| of the
    logits, the last block's output and its attention scores; r = width 256 / width 32 (at 32, mup is sp).

    Measured here (seeds 0, 1, 2; batch 32): mup r = 1.11, 0.84, 0.87 (logits), 0.65, 0.79, 0.74 (hidden),
    0.44, 0.29, 0.51 (attention); sp r = 6.9, 3.9, 6.1 (logits), 20, 41, 15 (hidden), 127, 7.7, 60 (attention).
    Bounds: under μP the logits and the residual stream stay within 2x of the base width's (the slight drop is the
    incoherent part of the update, which μP sends to 0 and SP grows), and the attention scores do not grow (their
    init part shrinks as 1/sqrt(m); the learned part is width-independent). Under SP every coordinate grows with
    width: r > 2.5 for the logits, > 5 for the hidden states and the attention scores."""
    mup = {width: coordinates(wide("mup", width)) for width in (32, 64, 128, 256)}
    sp_256 = coordinates(wide("sp", 256))
    for key in ("logits", "hidden"):
        values = [row[key] for row in mup.values()]
        assert 0.5 < mup[256][key] / mup[32][key] < 2.0 and max(values) / min(values) < 2.0, (key, mup)
    assert mup[256]["attention"] / mup[32]["attention"] < 1.5, mup
    growth = {key: sp_256[key] / mup[32][key] for key in sp_256}
    assert growth["logits"] > 2.5 and growth["hidden"] > 5 and growth["attention"] > 5, growth


def test_mup_models_refuse_hugging_face_export():
    from gptjax.interop import hf

    with pytest.raises(GptjaxError, match="model.parametrization='mup' cannot be exported to Hugging Face"):
        hf.hf_family(wide("mup", 64))
    assert hf.hf_family(wide("sp", 64)) == "gpt2"
