"""Attention kernels: which one `auto` picks for the target platform (never the host's), the xla fallback and its
one info line, splash (Pallas interpreter on CPU) and the cuDNN code path (jax.nn.dot_product_attention's XLA
backend; no GPU here) equal to the reference, alone and in shard_map over a 4-device CPU mesh, and a TPU AOT
compile of the train step that runs splash."""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model

from gptjax.model import attention

needs_libtpu = pytest.mark.skipif(not importlib.util.find_spec("libtpu"),
                                  reason="libtpu (pip install -e '.[tpu]') compiles for TPU topologies")
LENGTH = 256
TESTS = Path(__file__).parent


def reason(impl, platform, length=LENGTH, decoding=False, dropout=False, packed=False, **model):
    cfg = tiny_model(**{"n_head": 2, "d_model": 256, "dtype": "bfloat16", **model})
    return attention.kernel_unsupported_reason(impl, cfg, platform, length, decoding, dropout, packed)


def test_splash_serves_every_pattern_and_packed_documents_on_tpu():
    for pattern in ("dense", "local", "strided"):
        assert reason("splash", "tpu", attention=pattern, packed=True) is None


@pytest.mark.parametrize("impl, platform, overrides, expected", [
    ("splash", "cpu", {}, "needs a TPU, the target platform is cpu"),
    ("splash", "tpu", {"decoding": True}, "no KV-cache decode path"),
    ("splash", "tpu", {"dropout": True}, "does not apply attention dropout"),
    ("splash", "tpu", {"position": "alibi"}, "ALiBi"),
    ("splash", "tpu", {"length": 200}, "divisible by 128, got 200"),
    ("cudnn", "tpu", {}, "needs a GPU"),
    ("cudnn", "gpu", {"packed": True}, "segment ids"),
    ("cudnn", "gpu", {"attention": "strided"}, "not strided"),
    ("cudnn", "gpu", {"dtype": "float32"}, "bfloat16 or float16"),
    ("cudnn", "gpu", {"d_model": 512}, "at most 128, got 256"),
])
def test_a_kernel_that_cannot_serve_a_config_says_why(impl, platform, overrides, expected):
    assert expected in reason(impl, platform, **overrides)


def test_auto_picks_by_target_platform_and_logs_its_fallback_once(monkeypatch, caplog):
    cfg = tiny_model(attention_impl="auto", n_head=2, d_model=256, dtype="bfloat16", dropout=0.1)
    choose = functools.partial(attention.choose_kernel, cfg, LENGTH, decoding=False, packed=False)
    for platform, kernel in (("tpu", "splash"), ("gpu", "cudnn"), ("cpu", "xla")):
        monkeypatch.setattr(attention, "target_platform", lambda: platform)
        assert choose(dropout=False) == kernel
    monkeypatch.setattr(attention, "target_platform", lambda: "tpu")
    attention._log_fallback.cache_clear()
    with caplog.at_level(logging.INFO, logger=attention.__name__):
        assert [choose(dropout=True) for _ in range(3)] == ["xla"] * 3
    lines = [r.getMessage() for r in caplog.records if r.name == attention.__name__]
    assert lines == ["attention_impl=auto: using xla attention, not splash: attention_impl='splash' does not apply "
                     "attention dropout"]


def _qkv(batch=2, n_heads=2, kv_heads=1, head_dim=128, dtype=jnp.bfloat16):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    shapes = [(batch, LENGTH, n_heads, head_dim)] + [(batch, LENGTH, kv_heads, head_dim)] * 2
    return [jax.random.normal(key, shape, dtype) for key, shape in zip(keys, shapes)]


def _packed_layout(batch):
    """Each row three documents (lengths differ per row); positions restart at every document."""
    cuts = [(100, 180), (40, 230)][:batch]
    seg_BT = np.stack([np.searchsorted(np.array(c), np.arange(LENGTH), side="right") + 1 for c in cuts])
    starts = [np.concatenate([[0], c]) for c in cuts]
    pos_BT = np.stack([np.arange(LENGTH) - s[seg - 1] for s, seg in zip(starts, seg_BT)])
    return jnp.asarray(pos_BT, jnp.int32), jnp.asarray(seg_BT, jnp.int32)


@pytest.mark.parametrize("pattern, packed", [("dense", False), ("local", False), ("dense", True), ("local", True)])
def test_splash_equals_reference_within_bf16_tolerance(pattern, packed):
    cfg = tiny_model(attention=pattern, window=70, n_head=2, n_kv_head=1, d_model=256, dtype="bfloat16")
    q, k, v = _qkv()
    if packed:
        pos, seg = _packed_layout(2)
    else:
        pos, seg = jnp.broadcast_to(jnp.arange(LENGTH), (2, LENGTH)), jnp.ones((2, LENGTH), jnp.int32)
    reference = attention.xla_attention(q, k, v, attention.attention_mask(pos, pos, seg, seg, cfg))
    got = attention.splash_attention(q, k, v, cfg, seg if packed else None, interpret=True)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(reference, np.float32), atol=2e-2)


SHARDED = textwrap.dedent("""
    import functools
    import jax, jax.numpy as jnp, numpy as np
    from conftest import tiny_model
    from gptjax.config import MeshConfig
    from gptjax.model import attention
    from gptjax.parallel.mesh import make_mesh
    from gptjax.parallel.rules import use_rules
    from test_attention_kernels import _packed_layout, _qkv

    assert jax.device_count() == 4
    cfg = tiny_model(attention="local", window=70, n_head=4, n_kv_head=2, d_model=512, dtype="bfloat16")
    q, k, v = _qkv(batch=2, n_heads=4, kv_heads={kv_heads})
    pos, seg = _packed_layout(2)
    ones = jnp.ones_like(seg)
    mask = attention.attention_mask(pos, pos, seg, seg, cfg)
    plain = jnp.broadcast_to(jnp.arange(pos.shape[1]), pos.shape)
    causal_mask = attention.attention_mask(plain, plain, ones, ones, cfg)

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v).astype(jnp.float32) ** 2)

    kernels = {{
        "xla_packed": lambda q, k, v: attention.xla_attention(q, k, v, mask),
        "splash_packed": lambda q, k, v: attention.splash_attention(q, k, v, cfg, seg, interpret=True),
        "xla": lambda q, k, v: attention.xla_attention(q, k, v, causal_mask),
        "cudnn_path": lambda q, k, v: attention.cudnn_attention(q, k, v, cfg, implementation="xla"),
    }}
    with use_rules(make_mesh(MeshConfig(data=1, fsdp=2, tensor=2))):
        out = {{name: jax.jit(fn)(q, k, v) for name, fn in kernels.items()}}
        grads = {{name: jax.jit(jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2)))(q, k, v)
                 for name, fn in kernels.items() if name.endswith("packed")}}
        text = jax.jit(kernels["splash_packed"]).lower(q, k, v).as_text()
    assert "shard_map" in text or "manual" in text, "splash is not in shard_map"
    f32 = lambda x: np.asarray(x, np.float32)
    np.testing.assert_allclose(f32(out["splash_packed"]), f32(out["xla_packed"]), atol=2e-2)
    np.testing.assert_allclose(f32(out["cudnn_path"]), f32(out["xla"]), atol=2e-2)
    for got, want in zip(grads["splash_packed"], grads["xla_packed"]):
        np.testing.assert_allclose(f32(got), f32(want), atol=2e-2 * np.abs(f32(want)).max())  # bf16 gradients
    print("ok")
""")


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["kv_heads_split", "kv_heads_repeated"])
def test_kernels_in_shard_map_over_a_4_device_mesh_equal_reference(kv_heads):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED.format(kv_heads=kv_heads)], capture_output=True, text=True,
                          timeout=300, cwd=TESTS, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


AOT = textwrap.dedent("""
    import dataclasses
    from gptjax import config as config_lib
    from gptjax.model import attention
    from gptjax.parallel.mesh import make_mesh
    from gptjax.parallel.rules import use_rules
    from gptjax.train import compile_check as cc
    from gptjax.train.step import build_step

    cfg = config_lib.to_config(config_lib.load_experiment("experiments/shakespeare_char_cpu.py"))
    model = dataclasses.replace(cfg.model, vocab_size=65, block_size=256, n_layer=2, n_head=4, n_kv_head=2,
                                d_model=512, dtype="bfloat16", dropout=0.0, attention_impl="auto")
    cfg = dataclasses.replace(cfg, model=model, train=dataclasses.replace(cfg.train, batch_size=8),
                              mesh=cc.parse_mesh("data=2,fsdp=1,tensor=2", cfg.mesh))
    topology = cc.parse_topology("v5e:2x2")
    mesh = make_mesh(cfg.mesh, cc.topology_devices(topology))
    with use_rules(mesh):
        print("chosen:", attention.choose_kernel(cfg.model, 256, decoding=False, dropout=False, packed=True))
    lowered = build_step(cfg, mesh).lower_train()
    print("pallas call:", "tpu_custom_call" in lowered.as_text())
    print(cc.compile_report(cfg, topology, mesh.devices.flatten().tolist()).verdict())
""")


@needs_libtpu
def test_auto_picks_splash_for_a_tpu_topology_and_the_train_step_compiles():
    """The host is a CPU; the target (the mesh's devices) is a v5e slice, so auto must pick splash."""
    proc = subprocess.run([sys.executable, "-c", AOT], capture_output=True, text=True, timeout=400,
                          cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[:2] == ["chosen: splash", "pallas call: True"], proc.stdout
    assert lines[-1].startswith("fits: yes ("), proc.stdout
