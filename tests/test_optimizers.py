"""train.optimizer and train.schedule: each optimizer's update equals a reference (optax's own transformation, or
Muon's published algorithm written here in numpy), under trainable masks, μP and sharding; each schedule equals
its formula; bad settings are one line.

SOURCE of the Muon reference: Keller Jordan, github.com/KellerJordan/Muon (muon.py: `zeropower_via_newtonschulz5`,
`muon_update`), for torch weights [out, in]: momentum.lerp_(g, 1-β), update = g.lerp_(momentum, β), five quintic
iterations with (3.4445, -4.7750, 2.0315) on the wide side from X / (‖X‖_F + 1e-7), then ×max(1, out/in)^0.5."""
from __future__ import annotations

import dataclasses
import math
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_on_fake_cpu_devices, tiny_config, tiny_overrides

from gptjax.cli import main
from gptjax.config import Config, TrainConfig, to_dict, validate
from gptjax.errors import GptjaxError
from gptjax.model.transformer import Transformer, init_params
from gptjax.train.optim import (
    MatrixLayout,
    decay_mask,
    hidden_matrix_layouts,
    layout_from_axes,
    lr_schedule,
    make_optimizer,
    optimizer_lr_multipliers,
    run_optimizer,
)
from gptjax.train.run import resume_config

STEPS = 3
TRAIN = dict(lr=1e-2, min_lr=1e-3, warmup_steps=1, steps=10, weight_decay=0.1, grad_clip=1.0)


def model_params(scan: bool = False, **model):
    cfg = tiny_config(Path("."), model={"vocab_size": 64, "n_kv_head": 2, "scan_layers": scan, **model})
    return cfg, nn.unbox(jax.jit(lambda: init_params(Transformer(cfg.model), 0, 8))())


def random_grads(params) -> list:
    """STEPS gradient trees like `params`, N(0, 0.1²) from numpy (no per-shape compiles)."""
    return [jax.tree_util.tree_map(
        lambda p, rng=np.random.default_rng(i): jnp.asarray(0.1 * rng.standard_normal(p.shape), jnp.float32), params)
        for i in range(STEPS)]


@pytest.fixture(scope="module")
def tiny():
    """(config, params, STEPS gradient trees) of a 2-layer, 32-wide model with 3-D attention kernels."""
    cfg, params = model_params()
    return cfg, params, random_grads(params)


def run(optimizer: optax.GradientTransformation, params, grads):
    state, update = optimizer.init(params), jax.jit(optimizer.update)
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def first_update(optimizer: optax.GradientTransformation, grads, params):
    """The updates of one jitted step from a fresh state."""
    return jax.jit(optimizer.update)(grads, optimizer.init(params), params)[0]


def assert_trees_close(a, b, atol=1e-6):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


def train_config(**changes) -> TrainConfig:
    return TrainConfig(**{**TRAIN, **changes})


def optax_reference(t: TrainConfig) -> optax.GradientTransformation:
    """optax's own optimizer for `t` (weight decay as optax applies it: only adamw and lion decouple lr·wd)."""
    schedule = lr_schedule(t)
    clip = optax.clip_by_global_norm(t.grad_clip)
    if t.optimizer == "adamw":
        ref = optax.adamw(schedule, b1=t.beta1, b2=t.beta2, eps=t.eps, weight_decay=t.weight_decay, mask=decay_mask)
    elif t.optimizer == "lion":
        ref = optax.lion(schedule, b1=t.beta1, b2=t.beta2, weight_decay=t.weight_decay, mask=decay_mask)
    elif t.optimizer == "sgd":
        ref = optax.sgd(schedule, momentum=t.sgd_momentum, nesterov=True)
    else:
        ref = optax.adafactor(schedule, min_dim_size_to_factor=t.adafactor_factor_min_dim,
                              multiply_by_parameter_scale=False)
    return optax.chain(clip, ref)


@pytest.mark.parametrize("name,changes", [
    ("adamw", {}), ("lion", dict(beta1=0.8, beta2=0.98)), ("sgd", dict(weight_decay=0.0, sgd_momentum=0.8)),
    ("adafactor", dict(weight_decay=0.0, adafactor_factor_min_dim=8))])
def test_update_equals_optax(tiny, name, changes):
    cfg, params, grads = tiny
    t = train_config(optimizer=name, **changes)
    ours, _ = run(make_optimizer(t), params, grads)
    reference, _ = run(optax_reference(t), params, grads)
    assert_trees_close(ours, reference)


def matrix_views(tree, scanned: bool = False):
    """Each block kernel of `tree` reshaped to its [(layers,) fan_in, fan_out] matrix, the other leaves as they are."""

    def view(path, x):
        key = jax.tree_util.keystr(path)
        if not key.endswith("['kernel']"):
            return x
        lead = x.shape[:1] if scanned else ()
        n_in = FAN_IN_AXES[key.split("']['")[-2]]
        return x.reshape(*lead, math.prod(x.shape[len(lead): len(lead) + n_in]), -1)

    return jax.tree_util.tree_map_with_path(view, tree)


def test_adafactor_factors_each_kernel_as_its_matrix(tiny):
    cfg, params, grads = tiny
    t = train_config(optimizer="adafactor", weight_decay=0.0, adafactor_factor_min_dim=16)
    ours, state = run(make_optimizer(t, layout_of=hidden_matrix_layouts(cfg.model)), params, grads)
    reference, _ = run(optax_reference(t), matrix_views(params), [matrix_views(g) for g in grads])
    assert_trees_close(matrix_views(ours), reference)
    factored = state[1][0][0]
    key_moments = {factored.v_row["layer_0"]["attn"]["key"]["kernel"].shape,
                   factored.v_col["layer_0"]["attn"]["key"]["kernel"].shape}
    assert key_moments == {(32,), (16,)}  # [32, 2, 8] factored as the [32, 16] matrix it is
    assert factored.v["layer_0"]["attn"]["key"]["kernel"].size == 1  # a placeholder where factored


# --- Muon against the published algorithm ------------------------------------------------------------------------

FAN_IN_AXES = {"query": 1, "key": 1, "value": 1, "out": 2, "fc": 1, "proj": 1, "gate": 1, "up": 1}


def keller_muon_direction(g_OI: np.ndarray, steps: int = 5) -> np.ndarray:
    """zeropower_via_newtonschulz5 of a torch-layout [out, in] update, times max(1, out/in)^0.5."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g_OI.astype(np.float32)
    wide = x.shape[0] > x.shape[1]
    if wide:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if wide:
        x = x.T
    return x * max(1.0, g_OI.shape[0] / g_OI.shape[1]) ** 0.5


def reference_muon(t: TrainConfig, params, grads, scanned: bool):
    """Muon (numpy) on the blocks' kernels, optax.adamw on the rest, after global-norm clipping."""
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    module = lambda key: key.split("']['")[-2]
    hidden = {k for k in flat if k.endswith("['kernel']")}
    others = {k: v for k, v in flat.items() if k not in hidden}
    adam = optax.adamw(lr_schedule(t), b1=t.beta1, b2=t.beta2, eps=t.eps, weight_decay=t.weight_decay,
                       mask=decay_mask)
    adam_state, adam_update = adam.init(others), jax.jit(adam.update)
    momentum = {k: np.zeros_like(flat[k]) for k in hidden}
    lrs = np.asarray(jax.jit(jax.vmap(lr_schedule(t)))(jnp.arange(len(grads))))
    for step, grad_tree in enumerate(grads):
        g = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(grad_tree)[0]}
        norm = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in g.values()))
        g = {k: v * min(1.0, t.grad_clip / norm) for k, v in g.items()}
        muon_lr = float(lrs[step]) * t.muon_lr / t.lr
        for k in hidden:
            momentum[k] = t.muon_momentum * momentum[k] + (1 - t.muon_momentum) * g[k]
            nesterov = (1 - t.muon_momentum) * g[k] + t.muon_momentum * momentum[k]
            stack = nesterov.reshape(-1, *nesterov.shape[1:]) if scanned else nesterov[None]
            n_in = FAN_IN_AXES[module(k)]
            fan_in = math.prod(stack.shape[1:1 + n_in])
            direction = np.stack([keller_muon_direction(m.reshape(fan_in, -1).T).T for m in stack])
            flat[k] = flat[k] - muon_lr * (direction.reshape(flat[k].shape) + t.weight_decay * flat[k])
        updates, adam_state = adam_update({k: g[k] for k in others}, adam_state, {k: flat[k] for k in others})
        flat.update({k: flat[k] + np.asarray(u) for k, u in updates.items()})
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params),
                                        [flat[jax.tree_util.keystr(p)]
                                         for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]])


def test_kernels_are_read_as_fan_in_by_fan_out_matrices():
    assert layout_from_axes(("embed", "heads", "head_dim")) == MatrixLayout(batch_axes=0, fan_in_axes=1)
    assert layout_from_axes(("heads", "head_dim", "embed")) == MatrixLayout(0, 2)
    assert layout_from_axes(("layers", "mlp", "embed")) == MatrixLayout(1, 1)
    assert layout_from_axes(("layers", "embed", "kv_heads", "head_dim")) == MatrixLayout(1, 1)
    assert layout_from_axes(("layers", "expert", "mlp", "embed")) == MatrixLayout(2, 1)  # a stack of experts


@pytest.mark.parametrize("scan", [False, True])
def test_muon_equals_the_published_algorithm(scan):
    cfg, params = model_params(scan=scan)
    grads = random_grads(params)
    t = train_config(optimizer="muon", muon_lr=0.05, muon_momentum=0.9)
    ours, _ = run(make_optimizer(t, layout_of=hidden_matrix_layouts(cfg.model)), params, grads)
    assert_trees_close(ours, reference_muon(t, params, grads, scanned=scan))


def test_muon_updates_are_orthogonal_and_split_as_documented(tiny):
    cfg, params, grads = tiny
    t = train_config(optimizer="muon", weight_decay=0.0, warmup_steps=0, schedule="constant", muon_ns_steps=12)
    updates = first_update(make_optimizer(t, layout_of=hidden_matrix_layouts(cfg.model)), grads[0], params)
    fc = np.asarray(updates["layer_0"]["mlp"]["fc"]["kernel"]) / -t.muon_lr  # [32, 128]: scaled by sqrt(4)
    singular = np.linalg.svd(fc / 2.0, compute_uv=False)
    assert np.all(np.abs(singular - 1.0) < 0.35), singular  # NS5's coefficients aim at (0.7, 1.2), not exactly 1
    embedding = np.asarray(updates["embedding"]) / -t.lr  # AdamW's first step: ≈ sign(g)
    assert np.mean(np.abs(np.abs(embedding) - 1.0) < 1e-3) > 0.99


# --- masks, μP, decay ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["muon", "lion", "adafactor", "sgd"])
def test_a_frozen_mask_keeps_frozen_params_and_trains_the_rest_as_alone(tiny, name):
    cfg, params, grads = tiny
    t = train_config(optimizer=name, adafactor_factor_min_dim=8 if name == "adafactor" else 128)
    layout_of = hidden_matrix_layouts(cfg.model)
    trainable = jax.tree_util.tree_map_with_path(lambda path, _: "layer_1" in jax.tree_util.keystr(path), params)
    masked, state = run(make_optimizer(t, trainable, layout_of=layout_of), params, grads)
    assert_trees_close(masked["layer_0"], params["layer_0"], atol=0.0)
    assert_trees_close(masked["embedding"], params["embedding"], atol=0.0)
    alone, alone_state = run(make_optimizer(t, layout_of=layout_of), {"layer_1": params["layer_1"]},
                             [{"layer_1": g["layer_1"]} for g in grads])
    assert_trees_close(masked["layer_1"], alone["layer_1"])
    assert len(jax.tree_util.tree_leaves(state)) == len(jax.tree_util.tree_leaves(alone_state))


def test_mup_multipliers_per_optimizer():
    cfg = tiny_config(Path("."), model={"vocab_size": 64, "d_model": 64, "parametrization": "mup",
                                        "mup_base_width": 32})
    hidden = (jax.tree_util.DictKey("layer_0"), jax.tree_util.DictKey("mlp"), jax.tree_util.DictKey("fc"),
              jax.tree_util.DictKey("kernel"))
    embedding = (jax.tree_util.DictKey("embedding"),)
    multipliers = {name: optimizer_lr_multipliers(dataclasses.replace(cfg, train=TrainConfig(optimizer=name)))
                   for name in ("adamw", "lion", "adafactor", "sgd", "muon")}
    for name in ("adamw", "lion", "adafactor", "muon"):
        assert (multipliers[name](hidden), multipliers[name](embedding)) == (0.5, 1.0), name
    assert (multipliers["sgd"](hidden), multipliers["sgd"](embedding)) == (1.0, 2.0)
    assert all(optimizer_lr_multipliers(dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, parametrization="sp"), train=TrainConfig(optimizer=name))) is None for name in multipliers)


def test_lion_under_mup_scales_the_hidden_steps(tiny):
    cfg, params, grads = tiny
    mup = dataclasses.replace(cfg.model, parametrization="mup", mup_base_width=16)  # m = 2
    t = train_config(optimizer="lion", weight_decay=0.0)
    sp_step = first_update(make_optimizer(t), grads[0], params)
    mup_cfg = dataclasses.replace(cfg, model=mup, train=t)
    mup_step = first_update(run_optimizer(mup_cfg), grads[0], params)
    np.testing.assert_array_equal(mup_step["layer_0"]["mlp"]["fc"]["kernel"],
                                  sp_step["layer_0"]["mlp"]["fc"]["kernel"] * 0.5)
    np.testing.assert_array_equal(mup_step["embedding"], sp_step["embedding"])


@pytest.mark.parametrize("name", ["adamw", "muon", "lion", "adafactor", "sgd"])
def test_weight_decay_is_decoupled_on_matrices_only(tiny, name):
    cfg, params, _ = tiny
    t = train_config(optimizer=name, warmup_steps=0)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates = first_update(make_optimizer(t, layout_of=hidden_matrix_layouts(cfg.model)), zeros, params)
    for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
        p = params
        for key in path:
            p = p[key.key]
        lr = t.muon_lr if name == "muon" and path[-1].key == "kernel" else t.lr
        expected = -lr * t.weight_decay * np.asarray(p) if p.ndim >= 2 else np.zeros_like(p)
        np.testing.assert_allclose(np.asarray(u), expected, atol=1e-9, err_msg=jax.tree_util.keystr(path))


# --- sharding: N devices = 1 ------------------------------------------------------------------------------------

SHARDED = textwrap.dedent('''
    import json, pathlib, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from conftest import tiny_config
    from gptjax.parallel.mesh import make_mesh
    from gptjax.parallel.rules import use_rules
    from gptjax.train.step import build_step

    def flat(tree):
        return np.concatenate([np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(tree)]).tolist()

    out = {}
    for name, shape in [("muon", (1, 1, 1)), ("muon", (2, 4, 1)), ("adafactor", (1, 1, 1)), ("adafactor", (1, 4, 2))]:
        cfg = tiny_config(pathlib.Path("."), model={"vocab_size": 66, "n_kv_head": 2, "scan_layers": True},
                          train={"batch_size": 16, "optimizer": name, "adafactor_factor_min_dim": 8 if
                                 name == "adafactor" else 128}, mesh=dict(zip(("data", "fsdp", "tensor"), shape)))
        mesh = make_mesh(cfg.mesh, jax.devices()[: int(np.prod(shape))])
        step = build_step(cfg, mesh)
        state = step.init_state()
        losses = []
        if name == "muon":  # whole train steps
            for i in range(3):
                batch = np.asarray(jax.random.randint(jax.random.PRNGKey(i), (16, 17), 0, 65))
                state, metrics = step.train(state, step.to_global(step.format_batch(batch)))
                losses.append(float(metrics["loss"]))
            params = state.params
        else:  # the optimizer's update alone, on sharded params and gradients
            grads = jax.tree_util.tree_map(
                lambda p, s: jax.device_put(np.random.default_rng(0).standard_normal(p.shape).astype(np.float32), s),
                state.params, step.shardings.params)
            update = jax.jit(step.optimizer.update, out_shardings=(step.shardings.params, step.shardings.opt_state))
            with use_rules(mesh):
                params, _ = update(grads, state.opt_state, state.params)
        fc = state.params["layers"]["mlp"]["fc"]["kernel"]
        moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if x.shape == fc.shape]
        out[f"{name} {shape}"] = {"losses": losses, "params": flat(params), "fc_spec": str(fc.sharding.spec),
                                  "moment_specs": sorted({str(x.sharding.spec) for x in moments})}
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def sharded():
    return run_on_fake_cpu_devices(SHARDED)


@pytest.mark.parametrize("run_name", ["muon (2, 4, 1)", "adafactor (1, 4, 2)"])
def test_sharded_optimizer_equals_one_device(sharded, run_name):
    one = sharded[run_name.split()[0] + " (1, 1, 1)"]
    many = sharded[run_name]
    np.testing.assert_allclose(many["losses"], one["losses"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(many["params"], one["params"], atol=1e-5, rtol=0)
    if run_name.startswith("muon"):
        assert many["moment_specs"] == [many["fc_spec"]]  # the momentum is sharded like its param


# --- schedules --------------------------------------------------------------------------------------------------

def at(t: TrainConfig, steps) -> list[float]:
    schedule = lr_schedule(t)
    return [float(schedule(s)) for s in steps]


def test_inverse_sqrt_schedule():
    t = TrainConfig(lr=1.0, warmup_steps=4, steps=100, schedule="inverse_sqrt")
    np.testing.assert_allclose(at(t, [0, 3, 4, 16, 64, 400]), [1 / 5, 4 / 5, 1.0, 0.5, 0.25, 0.1], rtol=1e-6)


@pytest.mark.parametrize("shape,formula", [
    ("linear", lambda r: 1.0 - 0.9 * r),
    ("cosine", lambda r: 0.1 + 0.45 * (1 + math.cos(math.pi * r))),
    ("1-sqrt", lambda r: 1.0 - 0.9 * math.sqrt(r))])
def test_wsd_decay_shapes(shape, formula):
    t = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, steps=100, schedule="wsd", decay_steps=20, wsd_decay=shape)
    steps = [10, 50, 80, 85, 90, 95, 100, 150]
    expected = [1.0, 1.0] + [formula(min(1.0, (s - 80) / 20)) for s in steps[2:]]
    np.testing.assert_allclose(at(t, steps), expected, rtol=1e-6)


def test_wsd_default_decay_is_linear_as_before():
    assert TrainConfig().wsd_decay == "linear"


def test_linear_schedule():
    t = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10, steps=110, schedule="linear")
    np.testing.assert_allclose(at(t, [0, 9, 10, 35, 60, 110, 200]), [1 / 11, 10 / 11, 1.0, 0.75, 0.5, 0.0, 0.0],
                               atol=1e-7)


def test_cosine_with_restarts_rewarms_each_cycle():
    t = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=2, steps=60, schedule="cosine_restarts", cycles=3)
    cosine = lambda position: 0.5 * (1 + math.cos(math.pi * (position - 2) / 18))
    steps = [0, 1, 2, 11, 19, 20, 21, 22, 31, 40, 42, 59, 60, 80]
    expected = [1 / 3, 2 / 3, 1.0, cosine(11), cosine(19), 1 / 3, 2 / 3, 1.0, cosine(11), 1 / 3, 1.0, cosine(19),
                0.0, 0.0]
    np.testing.assert_allclose(at(t, steps), expected, atol=1e-6)


# --- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,expected", [
    (dict(optimizer="adam"), "train.optimizer='adam' is not one of adamw, muon, lion, adafactor, sgd"),
    (dict(muon_lr=0.05), "train.muon_lr=0.05 is a setting of train.optimizer=muon, not of train.optimizer=adamw"),
    (dict(optimizer="muon", sgd_momentum=0.5), "train.sgd_momentum=0.5 is a setting of train.optimizer=sgd"),
    (dict(optimizer="sgd", beta2=0.95), "train.beta2=0.95 is a setting of train.optimizer=adamw or muon or lion"),
    (dict(optimizer="lion", eps=1e-6), "train.eps=1e-06 is a setting of train.optimizer=adamw or muon"),
    (dict(adafactor_factor_min_dim=8), "train.adafactor_factor_min_dim=8 is a setting of train.optimizer=adafactor"),
    (dict(wsd_decay="cosine"), "train.wsd_decay=cosine is a setting of train.schedule=wsd, not of"),
    (dict(schedule="wsd", cycles=3), "train.cycles=3 is a setting of train.schedule=cosine_restarts"),
    (dict(schedule="inverse_sqrt", warmup_steps=0), "train.schedule=inverse_sqrt needs train.warmup_steps >= 1"),
    (dict(optimizer="muon", muon_ns_steps=0), "train.muon_ns_steps=0 must be >= 1"),
])
def test_bad_optimizer_settings_are_one_line(changes, expected):
    cfg = dataclasses.replace(Config(), train=dataclasses.replace(TrainConfig(), **changes))
    with pytest.raises(GptjaxError) as err:
        validate(cfg)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_bad_optimizer_setting_exits_2_from_the_cli(tmp_path, capsys):
    argv = ["train", "--config", "experiments/shakespeare_char_cpu.py", "--workdir", str(tmp_path / "run"),
            *tiny_overrides(), "--config.train.optimizer=lion", "--config.train.sgd_momentum=0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.sgd_momentum=0.5 is a setting of train.optimizer=sgd" in err[0], err


@pytest.mark.parametrize("key,old,new", [("optimizer", "adamw", "muon"), ("optimizer", "lion", "sgd")])
def test_resuming_with_another_optimizer_is_refused(tmp_path, key, old, new):
    saved = to_dict(dataclasses.replace(Config(), train=TrainConfig(optimizer=old)))
    with pytest.raises(GptjaxError) as err:
        resume_config(dataclasses.replace(Config(), train=TrainConfig(optimizer=new)), saved, 40, tmp_path)
    assert (f"holds a checkpoint (step 40) trained with train.optimizer={old}: its optimizer state would not match "
            f"train.optimizer={new}") in str(err.value)


def test_resuming_with_new_optimizer_settings_is_recorded(tmp_path):
    saved = to_dict(dataclasses.replace(Config(), train=TrainConfig(optimizer="muon")))
    cfg = dataclasses.replace(Config(), train=TrainConfig(optimizer="muon", muon_lr=0.01, muon_momentum=0.9))
    _, notes = resume_config(cfg, saved, 40, tmp_path)
    assert "changed at step 40: train.muon_lr 0.02 -> 0.01" in notes
    assert "changed at step 40: train.muon_momentum 0.95 -> 0.9" in notes


# --- EMA of the weights -------------------------------------------------------------------------------------------

def test_ema_follows_the_params_and_resumes_exactly(tmp_path, cache_dir):
    from conftest import run_cli

    from gptjax.train.metrics import read_metrics

    ema = {"train.ema_decay": 0.5, "train.eval_every": 3, "train.checkpoint_every": 3}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["train", "--config", "experiments/shakespeare_char_cpu.py", "--workdir"]
    assert run_cli([*args, str(straight), *tiny_overrides(steps=6, **ema)]).returncode == 0
    first = run_cli([*args, str(resumed), *tiny_overrides(steps=3, **ema)])
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_cli([*args, str(resumed), *tiny_overrides(steps=6, **ema)])
    assert second.returncode == 0, second.stderr[-2000:]
    a, b = read_metrics(straight), read_metrics(resumed)
    assert a[6]["val_loss_ema"] == b[6]["val_loss_ema"] and a[6]["val_loss"] == b[6]["val_loss"]
    assert a[3]["val_loss_ema"] != a[3]["val_loss"]
    off = run_cli([*args, str(resumed), *tiny_overrides(steps=7, **{**ema, "train.ema_decay": 0.0})])
    assert off.returncode == 0 and "val_loss_ema" not in read_metrics(resumed)[7], off.stderr[-2000:]
    assert_ema_exports(straight, resumed, tmp_path / "export")


def assert_ema_exports(with_ema: Path, without_ema: Path, out: Path) -> None:
    """`gptjax export --ema` writes the checkpoint's weight average (equal to `gptjax.load(ema=True)`, not the
    weights); a checkpoint without one is refused in one line."""
    import gptjax
    from gptjax.cli import main

    assert main(["export", "--workdir", str(with_ema), "--format", "safetensors", "--out", str(out), "--ema"]) == 0
    exported, average, raw = gptjax.load(out), gptjax.load(with_ema, ema=True), gptjax.load(with_ema)
    assert_trees_close(exported.params, average.params, atol=0)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(average.params),
                                                         jax.tree_util.tree_leaves(raw.params)))
    with pytest.raises(GptjaxError, match="keeps no moving average of the weights; train with train.ema_decay > 0"):
        gptjax.load(without_ema, ema=True)
    with pytest.raises(GptjaxError, match="is an export, which holds one set of weights"):
        gptjax.load(out, ema=True)


def test_ema_update_is_the_moving_average():
    from gptjax.parallel.mesh import make_mesh
    from gptjax.train.step import build_step

    cfg = tiny_config(Path("."), model={"vocab_size": 66}, train={"ema_decay": 0.75, "warmup_steps": 0})
    step = build_step(cfg, make_mesh(cfg.mesh, jax.devices()[:1]))
    state = step.init_state()
    expected = jax.tree_util.tree_map(np.asarray, state.params)
    for i in range(3):
        batch = np.random.default_rng(i).integers(0, 65, (8, 17), dtype=np.int32)
        state, _ = step.train(state, step.to_global(step.format_batch(batch)))
        expected = jax.tree_util.tree_map(lambda e, p: 0.75 * e + 0.25 * np.asarray(p), expected, state.params)
    assert_trees_close(state.ema_params, expected)
