"""N-device meshes equal one device: 8 fake CPU devices in a subprocess, three meshes, three train steps."""
from __future__ import annotations

import textwrap

import pytest
from conftest import run_on_fake_cpu_devices

SCRIPT = textwrap.dedent('''
    import functools, json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, "tests")
    from conftest import tiny_config
    from gptjax.parallel.mesh import make_mesh
    from gptjax.train.step import build_step
    import pathlib

    assert jax.device_count() == 8
    spec_list = lambda array: [list(e) if isinstance(e, tuple) else e for e in array.sharding.spec]
    out = {}
    for shape, scan in [((1, 1, 1), False), ((8, 1, 1), False), ((2, 4, 1), False), ((2, 2, 2), False),
                        ((1, 1, 1), True), ((2, 2, 2), True)]:
        cfg = tiny_config(pathlib.Path("."), model={"vocab_size": 66, "n_kv_head": 2, "tie_embeddings": False,
                                                     "scan_layers": scan},
                          train={"batch_size": 16, "grad_accum": 2}, mesh=dict(zip(("data", "fsdp", "tensor"), shape)))
        devices = jax.devices()[: int(np.prod(shape))]
        mesh = make_mesh(cfg.mesh, devices)
        step = build_step(cfg, mesh)
        state = step.init_state()
        losses = []
        for i in range(3):
            batch = np.asarray(jax.random.randint(jax.random.PRNGKey(i), (16, 17), 0, 65))
            state, metrics = step.train(state, step.to_global(step.format_batch(batch)))
            losses.append(float(metrics["loss"]))
        params = state.params["layers"] if "layers" in state.params else state.params["layer_0"]
        specs = {
            "embedding": spec_list(state.params["embedding"]),
            "lm_head": spec_list(state.params["lm_head"]),
            "query": spec_list(params["attn"]["query"]["kernel"]),
            "out": spec_list(params["attn"]["out"]["kernel"]),
            "fc": spec_list(params["mlp"]["fc"]["kernel"]),
            "proj": spec_list(params["mlp"]["proj"]["kernel"]),
            "adam_mu_fc": spec_list(
                state.opt_state[1][0].mu[("layers" if "layers" in state.params else "layer_0")]["mlp"]["fc"]["kernel"]),
        }
        out[f"{shape}{' scan' if scan else ''}"] = {"losses": losses, "specs": specs}
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def results(cache_dir):
    return run_on_fake_cpu_devices(SCRIPT)


@pytest.mark.parametrize("shape", ["(8, 1, 1)", "(2, 4, 1)", "(2, 2, 2)", "(2, 2, 2) scan"])
def test_mesh_losses_equal_one_device(results, shape):
    single = results["(1, 1, 1) scan" if shape.endswith("scan") else "(1, 1, 1)"]["losses"]
    for a, b in zip(results[shape]["losses"], single):
        assert abs(a - b) <= 1e-5, (shape, results[shape]["losses"], single)


def test_params_are_sharded_as_the_rules_table_says(results):
    fsdp_tp = results["(2, 4, 1)"]["specs"]
    assert fsdp_tp["embedding"] == [None, "fsdp"]
    assert fsdp_tp["query"] == ["fsdp", None, None]
    assert fsdp_tp["adam_mu_fc"] == fsdp_tp["fc"] == ["fsdp", None]
    unrolled = results["(2, 2, 2)"]["specs"]
    assert unrolled["query"] == ["fsdp", "tensor", None]
    full = results["(2, 2, 2) scan"]["specs"]  # scanned layers: a leading unsharded 'layers' axis
    assert full["embedding"] == ["tensor", "fsdp"]
    assert full["lm_head"] == ["fsdp", "tensor"]
    assert full["query"] == [None, "fsdp", "tensor", None]
    assert full["out"] == [None, "tensor", None, "fsdp"]
    assert full["fc"] == [None, "fsdp", "tensor"]
    assert full["proj"] == [None, "tensor", "fsdp"]
    assert full["adam_mu_fc"] == full["fc"]
    data_only = results["(8, 1, 1)"]["specs"]
    assert data_only["fc"] == [None, None]
