"""Mixture of experts: routing and both dispatches against a per-token numpy reference, the router losses, the layer
pattern, gradients, training through the trainer, KV-cache decoding, 1 device = 8 fake devices, bad configs."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_fake_cpu_devices, tiny_config, tiny_model

from gptjax.config import Config, MeshConfig, validate
from gptjax.errors import GptjaxError
from gptjax.model.moe import MOE_COLLECTION, MoeMlp, capacity
from gptjax.model.transformer import Transformer, flops_per_token

D, E = 8, 4


def moe_cfg(**overrides):
    base = dict(d_model=D, d_ff=12, moe_experts=E, moe_top_k=2, init_std=0.5)
    return tiny_model(**{**base, **overrides})


def run_moe(cfg, x_BTD, seed=0):
    """(params, output, sown statistics) of a MoeMlp on `x_BTD`."""
    module = MoeMlp(cfg, cfg.init_std, cfg.init_std)
    params = nn.unbox(module.init(jax.random.PRNGKey(seed), x_BTD)["params"])
    params = jax.tree_util.tree_map_with_path(  # nonzero biases, so the reference checks where they go
        lambda path, p: p + 0.1 if path[-1].key == "bias" else p, params)
    y, sown = module.apply({"params": params}, x_BTD, mutable=[MOE_COLLECTION])
    return params, np.asarray(y, np.float64), {k: np.asarray(v[0]) for k, v in sown[MOE_COLLECTION].items()}


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def np_mlp(x_D, p, kind, e=None):
    """One expert's (or the shared Mlp's) output for one token, in float64."""
    def lin(name, h):
        w = np.asarray(p[name]["kernel"], np.float64)
        b = np.asarray(p[name]["bias"], np.float64) if "bias" in p[name] else 0.0
        return h @ (w[e] if e is not None else w) + (b[e] if e is not None and np.ndim(b) else b)

    if kind == "swiglu":
        g = lin("gate", x_D)
        h = g / (1 + np.exp(-g)) * lin("up", x_D)
    else:
        h = gelu_tanh(lin("fc", x_D))
    return lin("proj", h)


def np_routing(x_ND, params, cfg):
    """Per token: (experts in rank order, their weights, full softmax, logits), as the config says, in float64."""
    logits_NE = x_ND @ np.asarray(params["router"]["kernel"], np.float64)
    probs_NE = np.exp(logits_NE - logits_NE.max(-1, keepdims=True))
    probs_NE /= probs_NE.sum(-1, keepdims=True)
    experts_NK = np.argsort(-logits_NE, axis=-1)[:, :cfg.moe_top_k]
    if cfg.moe_router == "softmax_topk":
        weights_NK = np.take_along_axis(probs_NE, experts_NK, -1)
    else:
        top = np.take_along_axis(logits_NE, experts_NK, -1)
        weights_NK = np.exp(top - top.max(-1, keepdims=True))
        weights_NK /= weights_NK.sum(-1, keepdims=True)
    if cfg.moe_renormalize:
        weights_NK = weights_NK / weights_NK.sum(-1, keepdims=True)
    return experts_NK, weights_NK, probs_NE, logits_NE


def np_moe(x_BTD, params, cfg, kept_BTK=None):
    """The naive reference: for each token, its top-k experts' MLP outputs weighted (+ shared experts)."""
    b, t, d = x_BTD.shape
    x_ND = np.asarray(x_BTD, np.float64).reshape(-1, d)
    experts_NK, weights_NK, _, _ = np_routing(x_ND, params, cfg)
    kept_NK = np.ones_like(experts_NK, bool) if kept_BTK is None else kept_BTK.reshape(-1, cfg.moe_top_k)
    y_ND = np.zeros_like(x_ND)
    for n in range(len(x_ND)):
        for k in range(cfg.moe_top_k):
            if kept_NK[n, k]:
                y_ND[n] += weights_NK[n, k] * np_mlp(x_ND[n], params, cfg.mlp, experts_NK[n, k])
        if cfg.moe_shared_experts:
            y_ND[n] += np_mlp(x_ND[n], params["shared"], cfg.mlp)
    return y_ND.reshape(b, t, d)


X_BTD = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (2, 6, D)))


@pytest.mark.parametrize("case", [
    dict(moe_router="softmax_topk", moe_renormalize=True, mlp="swiglu", use_bias=False),
    dict(moe_router="softmax_topk", moe_renormalize=False, mlp="gelu", moe_shared_experts=2),
    dict(moe_router="topk_softmax", moe_renormalize=True, mlp="gelu"),
    dict(moe_router="topk_softmax", moe_renormalize=False, mlp="swiglu", moe_shared_experts=1, moe_top_k=3),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_dropless_equals_a_per_token_reference(case):
    cfg = moe_cfg(**case)
    params, y, _ = run_moe(cfg, jnp.asarray(X_BTD))
    np.testing.assert_allclose(y, np_moe(X_BTD, params, cfg), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("group_sizes", [(7, 0, 30, 3), (40, 0, 0, 0), (10, 10, 10, 10)])
def test_the_cpu_block_grouped_matmul_equals_ragged_dot_with_its_gradients(group_sizes):
    from gptjax.model.moe import block_grouped_matmul

    a_SI = jax.random.normal(jax.random.PRNGKey(0), (40, 6))
    kernel_EIO = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 5))
    sizes_E = jnp.asarray(group_sizes, jnp.int32)

    def loss(matmul):
        return lambda a, w: jnp.sum(jnp.sin(matmul(a, w)))

    reference = jax.value_and_grad(loss(lambda a, w: jax.lax.ragged_dot(a, w, sizes_E)), (0, 1))(a_SI, kernel_EIO)
    blocked = jax.jit(jax.value_and_grad(loss(lambda a, w: block_grouped_matmul(a, w, sizes_E, jnp.float32)),
                                         (0, 1)))(a_SI, kernel_EIO)
    for want, got in zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(blocked)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-5)


def test_capacity_with_room_for_every_token_equals_dropless():
    dropless = run_moe(moe_cfg(mlp="swiglu"), jnp.asarray(X_BTD))
    roomy = run_moe(moe_cfg(mlp="swiglu", moe_dispatch="capacity", moe_capacity_factor=2.0), jnp.asarray(X_BTD))
    np.testing.assert_allclose(roomy[1], dropless[1], atol=2e-5)
    assert roomy[2]["dropped"] == 0.0


def test_capacity_drops_the_slots_past_each_experts_capacity_in_priority_order():
    cfg = moe_cfg(moe_dispatch="capacity", moe_capacity_factor=0.5)
    params, y, sown = run_moe(cfg, jnp.asarray(X_BTD))
    b, t, _ = X_BTD.shape
    slots = capacity(t, cfg.moe_top_k, E, 0.5)
    assert slots == math.ceil(t * 2 / E * 0.5)
    experts_BTK = np_routing(X_BTD.reshape(-1, D).astype(np.float64), params, cfg)[0].reshape(b, t, -1)
    kept_BTK = np.zeros_like(experts_BTK, bool)
    for row in range(b):  # every token's first choice, in token order, then every second choice
        used = np.zeros(E, int)
        for k in range(cfg.moe_top_k):
            for tok in range(t):
                e = experts_BTK[row, tok, k]
                kept_BTK[row, tok, k] = used[e] < slots
                used[e] += 1
    assert 0 < kept_BTK.sum() < kept_BTK.size
    np.testing.assert_allclose(y, np_moe(X_BTD, params, cfg, kept_BTK), atol=2e-5, rtol=1e-5)
    assert abs(float(sown["dropped"]) - (1 - kept_BTK.mean())) < 1e-6


def test_router_losses_and_expert_fractions_equal_their_formulas():
    cfg = moe_cfg(moe_top_k=2)
    params, _, sown = run_moe(cfg, jnp.asarray(X_BTD))
    experts_NK, _, probs_NE, logits_NE = np_routing(X_BTD.reshape(-1, D).astype(np.float64), params, cfg)
    fraction_E = np.bincount(experts_NK.reshape(-1), minlength=E) / experts_NK.size
    np.testing.assert_allclose(sown["expert_fraction"], fraction_E, atol=1e-7)
    np.testing.assert_allclose(sown["aux_loss"], E * np.sum(fraction_E * probs_NE.mean(0)), rtol=1e-5)
    log_z_N = np.log(np.exp(logits_NE).sum(-1))
    np.testing.assert_allclose(sown["z_loss"], np.mean(log_z_N ** 2), rtol=1e-5)


def test_the_layer_pattern_puts_moe_where_stated_and_flops_count_active_experts():
    cfg = tiny_model(n_layer=5, moe_experts=4, moe_first_dense=1, moe_every=2)
    assert [cfg.is_moe_layer(i) for i in range(5)] == [False, False, True, False, True]
    params = jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    assert ["moe" in params[f"layer_{i}"] for i in range(5)] == [False, False, True, False, True]
    assert all(("mlp" in params[f"layer_{i}"]) != ("moe" in params[f"layer_{i}"]) for i in range(5))
    assert params["layer_2"]["moe"]["fc"]["kernel"].value.shape == (4, 32, 128)
    dense = tiny_model(n_layer=2)
    top1 = tiny_model(n_layer=2, moe_experts=8, moe_top_k=1)  # one active expert of the dense width, plus the router
    assert flops_per_token(top1, 16) - flops_per_token(dense, 16) == 6 * 2 * 32 * 8


def test_gradients_reach_the_router_and_every_used_expert(cache_dir):
    from gptjax.train.objectives import NextTokenLM, lm_batch

    cfg = tiny_model(moe_experts=4, moe_top_k=2, mlp="swiglu", moe_shared_experts=1)
    model = Transformer(cfg)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    batch = lm_batch(np.asarray(jax.random.randint(jax.random.PRNGKey(1), (4, 17), 0, 66)))
    (loss, sums), grads = jax.jit(jax.value_and_grad(lambda p: NextTokenLM()(p, None, model, batch, None),
                                                     has_aux=True))(params)
    moe_grads = grads["layer_0"]["moe"]
    assert np.abs(np.asarray(moe_grads["router"]["kernel"])).sum() > 0
    fractions = np.asarray([float(sums[f"moe/layer_0/expert_{e}"] / sums["weight"]) for e in range(4)])
    assert abs(fractions.sum() - 1.0) < 1e-5
    for name in ("gate", "up", "proj"):
        per_expert = np.abs(np.asarray(moe_grads[name]["kernel"])).sum(axis=(1, 2))
        np.testing.assert_array_equal(per_expert > 0, fractions > 0)
    assert np.abs(np.asarray(moe_grads["shared"]["gate"]["kernel"])).sum() > 0
    # the objective adds the weighted router losses to the summed cross-entropy, and reports them
    expected = sums["loss"] + sums["weight"] * (cfg.moe_aux_loss_weight * sums["moe_aux_loss"] / sums["weight"]
                                                + cfg.moe_z_loss_weight * sums["moe_z_loss"] / sums["weight"])
    assert abs(float(loss) - float(expected)) < 1e-3 and float(sums["moe_aux_loss"]) > 0


def test_a_tiny_moe_model_trains_with_the_balance_loss_in_metrics_and_val_loss_without_it(tmp_path, cache_dir):
    from gptjax.train.loop import train

    cfg = tiny_config(cache_dir, model={"moe_experts": 4, "moe_top_k": 2, "moe_first_dense": 1},
                      train={"steps": 8, "lr": 1e-2, "eval_every": 8})
    result = train(cfg, tmp_path / "run", show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert all(np.isfinite(r["moe_aux_loss"]) and r["moe_aux_loss"] >= 1.0 - 1e-5 for r in steps)
    assert all("moe/layer_1/expert_3" in r and "moe/layer_0/expert_0" not in r for r in steps)
    assert np.mean([r["loss"] for r in steps[-3:]]) < np.mean([r["loss"] for r in steps[:3]])
    evals = [r for r in records if "val_loss" in r]
    assert evals and not any(k.startswith("moe") for r in evals for k in r)
    assert np.isfinite(result["val_loss"])


def test_kv_cache_greedy_decoding_equals_full_recompute():
    from test_generate import make, recompute_greedy

    from gptjax.generate import SamplingParams, generate_ids

    cfg = tiny_model(block_size=32, position="rope", moe_experts=4, moe_top_k=2, mlp="swiglu", moe_shared_experts=1)
    model, params = make(cfg)
    prompts = [[5, 9, 2, 7, 1, 3, 8], [11, 4]]
    got = generate_ids(model, params, prompts, max_new_tokens=8, eot_id=65, sp=SamplingParams(temperature=0.0),
                       chunk=4)
    for prompt, ids in zip(prompts, got):
        expected = recompute_greedy(model, params, prompt, 8)
        assert ids == (expected[: expected.index(65)] if 65 in expected else expected)


@pytest.mark.parametrize("fields, message", [
    (dict(moe_experts=4, moe_top_k=5), "model.moe_top_k=5 must be <= model.moe_experts=4"),
    (dict(moe_experts=4, n_layer=2, moe_first_dense=2), "leave no MoE layer among model.n_layer=2"),
    (dict(moe_experts=4, scan_layers=True, moe_every=2), "model.scan_layers=True needs every layer alike"),
    (dict(moe_experts=4, lora_rank=4, lora_targets=("q", "mlp")), "no adapters for expert MLPs"),
    (dict(moe_experts=4, moe_router="sinkhorn"), "model.moe_router='sinkhorn' is not one of"),
])
def test_a_router_config_that_cannot_work_is_one_line(fields, message):
    with pytest.raises(GptjaxError, match=message) as error:
        validate(Config(model=tiny_model(**fields)))
    assert "\n" not in str(error.value)


def test_experts_not_divisible_by_the_expert_mesh_axis_are_refused():
    with pytest.raises(GptjaxError, match=r"model.moe_experts=6 is not divisible by the expert mesh axis mesh.fsdp=4"):
        validate(Config(model=tiny_model(moe_experts=6), mesh=MeshConfig(fsdp=4)))
    validate(Config(model=tiny_model(moe_experts=8), mesh=MeshConfig(fsdp=4)))


SHARDED = textwrap.dedent('''
    import json, pathlib, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from conftest import tiny_config
    from gptjax.errors import GptjaxError
    from gptjax.parallel.mesh import make_mesh
    from gptjax.train.step import build_step

    out = {}
    # capacity_factor 2 = E/k: room for every token, so capacity dispatch must give dropless's losses
    for dispatch, shape in [("dropless", (1, 1, 1)), ("dropless", (2, 2, 2)), ("capacity", (2, 2, 2))]:
        cfg = tiny_config(pathlib.Path("."), model={"vocab_size": 66, "n_layer": 1, "moe_experts": 4, "moe_top_k": 2,
                                                     "moe_dispatch": dispatch, "moe_capacity_factor": 2.0,
                                                     "mlp": "swiglu", "use_bias": False},
                          train={"batch_size": 16}, mesh=dict(zip(("data", "fsdp", "tensor"), shape)))
        step = build_step(cfg, make_mesh(cfg.mesh, jax.devices()[: int(np.prod(shape))]))
        state = step.init_state()
        losses = []
        for i in range(2):
            batch = np.asarray(jax.random.randint(jax.random.PRNGKey(i), (16, 17), 0, 65))
            state, metrics = step.train(state, step.to_global(step.format_batch(batch)))
            losses.append([float(metrics["loss"]), float(metrics["moe_aux_loss"])])
        gate = state.params["layer_0"]["moe"]["gate"]["kernel"]
        spec = [list(e) if isinstance(e, tuple) else e for e in gate.sharding.spec]
        out[f"{dispatch} {shape}"] = {"losses": losses, "gate_spec": spec}
    cfg = tiny_config(pathlib.Path("."), model={"vocab_size": 66, "moe_experts": 6}, mesh={"data": 1, "fsdp": -1})
    try:
        build_step(cfg, make_mesh(cfg.mesh, jax.devices()[:4]))
    except GptjaxError as error:
        out["refused"] = str(error)
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def sharded(cache_dir):
    return run_on_fake_cpu_devices(SHARDED)


@pytest.mark.parametrize("run", ["dropless (2, 2, 2)", "capacity (2, 2, 2)"])
def test_eight_fake_devices_equal_one_for_loss_and_a_train_step(sharded, run):
    single = sharded["dropless (1, 1, 1)"]["losses"]
    np.testing.assert_allclose(sharded[run]["losses"], single, atol=1e-5)


def test_experts_are_sharded_over_fsdp_and_a_mesh_that_splits_an_expert_is_refused(sharded):
    assert sharded["dropless (2, 2, 2)"]["gate_spec"] == ["fsdp", None, "tensor"]
    assert "model.moe_experts=6 is not divisible by the expert mesh axis mesh.fsdp=4" in sharded["refused"]


def test_scan_and_unrolled_moe_models_agree():
    unrolled = tiny_model(moe_experts=4, mlp="swiglu")
    scanned = dataclasses.replace(unrolled, scan_layers=True)
    params = nn.unbox(Transformer(unrolled).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    layers = [params[f"layer_{i}"] for i in range(unrolled.n_layer)]
    stacked = {k: v for k, v in params.items() if not k.startswith("layer_")}
    stacked["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 66)
    a, sown_a = jax.jit(functools.partial(Transformer(unrolled).apply, mutable=[MOE_COLLECTION]))(
        {"params": params}, tokens)
    b, sown_b = jax.jit(functools.partial(Transformer(scanned).apply, mutable=[MOE_COLLECTION]))(
        {"params": stacked}, tokens)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    from gptjax.model.moe import moe_metrics

    ma, mb = moe_metrics(sown_a[MOE_COLLECTION], 2), moe_metrics(sown_b[MOE_COLLECTION], 2)
    assert ma.keys() == mb.keys()
    for key in ma:
        assert abs(float(ma[key]) - float(mb[key])) < 1e-5, key


def test_param_counts_cover_every_expert():
    from gptjax.model.transformer import count_params
    from gptjax.scaling.counts import param_counts

    cfg = tiny_model(n_layer=3, moe_experts=4, moe_first_dense=1, moe_shared_experts=1, mlp="swiglu", moe_d_ff=16)
    shapes = jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    assert param_counts(cfg).total == count_params(shapes)


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_bfloat16_compute_runs_both_dispatches_close_to_float32(dispatch):
    f32 = tiny_model(n_layer=1, moe_experts=4, mlp="swiglu", moe_dispatch=dispatch, moe_capacity_factor=2.0)
    bf16 = dataclasses.replace(f32, dtype="bfloat16")
    params = nn.unbox(Transformer(f32).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 66)
    want = jax.jit(Transformer(f32).apply)({"params": params}, tokens)
    got = jax.jit(Transformer(bf16).apply)({"params": params}, tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-2)
    grads = jax.jit(jax.grad(lambda p: Transformer(bf16).apply({"params": p}, tokens).sum()))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))
