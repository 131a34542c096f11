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
from gptjax.model.transformer import Transformer, abstract_params, init_params
from gptjax.parallel.rules import tree_shardings, use_rules


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key: dropout keys are fold_in(rng, step)
    frozen: Any = None  # params that are used but never trained (e.g. a DPO reference), sharded like params
    loss_ema: jax.Array | None = None  # running mean of the loss (train.spike_factor)
    skipped_steps: jax.Array | None = None  # updates skipped as loss spikes
    ema_params: Any = None  # the moving average of params (train.ema_decay > 0), sharded like them


def _init_state(model: Transformer, optimizer: optax.GradientTransformation, cfg: Config, frozen=None) -> TrainState:
    params = nn.unbox(init_params(model, cfg.train.seed, min(cfg.model.block_size, 8)))
    spike = cfg.train.spike_factor > 0
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.PRNGKey(cfg.train.seed + 1), frozen=frozen,
                      loss_ema=jnp.zeros((), jnp.float32) if spike else None,
                      skipped_steps=jnp.zeros((), jnp.int32) if spike else None,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params) if cfg.train.ema_decay > 0 else None)


def state_shardings(model: Transformer, optimizer: optax.GradientTransformation, cfg: Config, mesh: Mesh,
                    frozen_example=None):
    """(shardings, abstract state): params sharded by the rules table, optimizer moments like their params (state
    of another shape, e.g. Adafactor's factored moments, replicated), frozen params like the params they mirror."""
    param_shardings = nn.unbox(tree_shardings(abstract_params(cfg.model, cfg.train.seed), mesh))
    abstract_frozen = None if frozen_example is None else jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), frozen_example)
    abstract_state = jax.eval_shape(lambda: _init_state(model, optimizer, cfg, abstract_frozen))
    replicated = NamedSharding(mesh, PartitionSpec())
    masked = lambda leaf: isinstance(leaf, optax.MaskedNode)  # a frozen param's (absent) optimizer state

    def like_param(leaf, sharding, param):
        if masked(leaf):
            return leaf
        return sharding if leaf.shape == param.shape else replicated

    opt_shardings = optax.tree_map_params(optimizer, like_param, abstract_state.opt_state, param_shardings,
                                          abstract_state.params, transform_non_params=lambda _: replicated,
                                          is_leaf=masked)
    scalar = lambda leaf: None if leaf is None else replicated
    shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings, rng=replicated,
                           frozen=None if frozen_example is None else param_shardings,
                           loss_ema=scalar(abstract_state.loss_ema), skipped_steps=scalar(abstract_state.skipped_steps),
                           ema_params=None if abstract_state.ema_params is None else param_shardings)
    return shardings, abstract_state


def create_state(model: Transformer, optimizer: optax.GradientTransformation, cfg: Config, mesh: Mesh, shardings,
                 frozen=None):
    """Initialises the state directly into its shardings (never whole on one device first). Without `frozen` the
    state has none yet (a caller fills it in later, e.g. with the params a finetune starts from)."""
    if frozen is None:
        shardings = shardings.replace(frozen=None)
    with use_rules(mesh):
        return jax.jit(lambda f: _init_state(model, optimizer, cfg, f), out_shardings=shardings)(frozen)
