"""Every experiment file loads, validates, builds its model abstractly (no weights materialised) and reruns from
the config.json a run of it saves."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from conftest import REPO

from gptjax import config as config_lib
from gptjax.model.transformer import Transformer, count_params
from gptjax.parallel.mesh import mesh_shape

EXPERIMENTS = sorted((REPO / "experiments").glob("*.py"))
EXPECTED_PARAMS = {"gpt2_124m": (124e6, 125e6), "gpt2_350m": (354e6, 356e6), "gpt2_774m": (774e6, 775e6),
                   "gpt2_1.5b": (1557e6, 1558e6), "llama_1b": (1100e6, 1101e6), "llama_7b": (6738e6, 6739e6),
                   "mixtral_8x7b": (46702e6, 46703e6)}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_builds(path: Path):
    cfg = config_lib.to_config(config_lib.load_experiment(path))
    vocab = 50257 if cfg.data.tokenizer == "gpt2_bpe" else (cfg.data.vocab_size or 66)
    model_cfg = cfg.model.__class__(**{**config_lib.to_dict(cfg)["model"], "vocab_size": vocab})
    shapes = jax.eval_shape(lambda: Transformer(model_cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
    n = count_params(shapes["params"])
    low, high = EXPECTED_PARAMS.get(path.stem, (1e4, 1e9))
    assert low <= n <= high, n


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_reruns_from_its_saved_json(tmp_path, path: Path):
    cfg = config_lib.to_config(config_lib.load_experiment(path))
    saved = tmp_path / "config.json"
    saved.write_text(config_lib.to_json(cfg))
    assert config_lib.to_config(config_lib.load_experiment(saved)) == cfg
    changes = config_lib.resume_changes(json.loads(saved.read_text()), config_lib.to_dict(cfg))
    assert changes.recorded == changes.forbidden == []


LARGE = [path for path in EXPERIMENTS if path.stem in EXPECTED_PARAMS]


@pytest.mark.parametrize("path", LARGE, ids=lambda p: p.stem)
def test_large_experiment_names_a_topology_it_shards_evenly_on(path: Path):
    """The topology check without compiling (benchmarks/experiments_fit.py compiles each for its memory)."""
    import importlib.util

    from gptjax.train import compile_check as cc

    spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    topology = cc.parse_topology(module.TOPOLOGY)
    assert f"--topology {module.TOPOLOGY}" in module.__doc__, "the docstring names its target"
    cfg = cc.with_known_vocab(config_lib.to_config(config_lib.load_experiment(path)))
    if cfg.model.moe_experts:  # experts are sharded over fsdp, which must divide them: tensor takes the other chips
        shape = dict(zip(("data", "fsdp", "tensor"), mesh_shape(cfg.mesh, topology.chips)))
        assert shape["data"] == 1 and shape["fsdp"] == cfg.model.moe_experts
    else:
        assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (1, -1, 1), "fsdp over every chip"
        shape = {"data": 1, "fsdp": topology.chips, "tensor": 1}
    assert cc.sharding_problem(cfg, shape) is None
