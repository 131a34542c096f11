"""The train state, created sharded: eval_shape -> shardings from the rules table -> jit(init, out_shardings)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gptjax.config import Config
from gptjax.model.transformer import Transformer
from gptjax.parallel.rules import tree_shardings, use_rules


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key: dropout keys are fold_in(rng, step)


def init_params(model: Transformer, seed: int, seq_len: int):
    """Boxed (logically partitioned) params for a [1, seq_len] input."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    return model.init(jax.random.PRNGKey(seed), tokens)["params"]


def _init_state(model: Transformer, optimizer: optax.GradientTransformation, cfg: Config) -> TrainState:
    boxed = init_params(model, cfg.train.seed, min(cfg.model.block_size, 8))
    params = nn.unbox(boxed)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.PRNGKey(cfg.train.seed + 1))


def state_shardings(model: Transformer, optimizer: optax.GradientTransformation, cfg: Config, mesh: Mesh):
    """(shardings, abstract state): params sharded by the rules table, optimizer moments like their params."""
    boxed_params = jax.eval_shape(lambda: init_params(model, cfg.train.seed, min(cfg.model.block_size, 8)))
    param_shardings = nn.unbox(tree_shardings(boxed_params, mesh))
    abstract_state = jax.eval_shape(lambda: _init_state(model, optimizer, cfg))
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shardings = optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_state.opt_state,
                                          param_shardings, transform_non_params=lambda _: replicated)
    shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings, rng=replicated)
    return shardings, abstract_state


def create_state(model: Transformer, optimizer: optax.GradientTransformation, cfg: Config, mesh: Mesh, shardings):
    """Initialises the state directly into its shardings (never whole on one device first)."""
    with use_rules(mesh):
        return jax.jit(lambda: _init_state(model, optimizer, cfg), out_shardings=shardings)()
