"""The one jitted, sharded train step and its eval twin, built in one place (`build_step`).

`train_step(state, batch) -> (state, metrics)` and `eval_step` are pure; `build_step` binds them to a model,
optimizer and objective, jits them with the state's and the batch's shardings, and exposes the abstract inputs so
the loop, the benchmarks and an ahead-of-time compile all use the same step.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from gptjax.config import FINETUNE_OBJECTIVES, Config, check_experts_divide
from gptjax.model.transformer import Transformer
from gptjax.parallel.rules import batch_sharding, use_rules
from gptjax.train import stats
from gptjax.train.objectives import NextTokenLM, Objective, batch_format, make_objective
from gptjax.train.optim import lr_schedule, run_optimizer
from gptjax.train.state import TrainState, create_state, state_shardings

SPIKE_EMA = 0.95  # weight of the old running mean of the loss (train.spike_factor)


def _freeze(params, trainable):
    """Stops gradients into frozen leaves so XLA skips their weight gradients."""
    if trainable is None:
        return params
    return jax.tree_util.tree_map(lambda p, keep: p if keep else jax.lax.stop_gradient(p), params, trainable)


def _summed_grads(state: TrainState, batch: dict, *, model: Transformer, objective: Objective, cfg: Config,
                  trainable) -> tuple[Any, dict]:
    """Gradients and metrics of the objective, summed (not averaged) over the batch's `grad_accum` microbatches."""
    t = cfg.train
    dropout_on = cfg.model.dropout > 0.0
    step_rng = jax.random.fold_in(state.rng, state.step)

    def loss(params, micro, rng):
        return objective(_freeze(params, trainable), state.frozen, model, micro, rng)

    grad_fn = jax.grad(loss, has_aux=True)
    if t.grad_accum == 1:
        return grad_fn(state.params, batch, step_rng if dropout_on else None)

    # Microbatch a takes rows a, a+A, a+2A, ...: each keeps an even share on every data-parallel device.
    def to_micro(x_B):
        return x_B.reshape(x_B.shape[0] // t.grad_accum, t.grad_accum, *x_B.shape[1:]).swapaxes(0, 1)

    micro_A = jax.tree_util.tree_map(to_micro, batch)

    def accumulate(carry, xs):
        grads_acc, sums_acc = carry
        index, micro = xs
        rng = jax.random.fold_in(step_rng, index) if dropout_on else None
        grads, sums = grad_fn(state.params, micro, rng)
        return (jax.tree_util.tree_map(jnp.add, grads_acc, grads),
                jax.tree_util.tree_map(jnp.add, sums_acc, sums)), None

    sums_shape = jax.eval_shape(lambda: grad_fn(state.params, jax.tree_util.tree_map(lambda x: x[0], micro_A), None)[1])
    zeros = (jax.tree_util.tree_map(jnp.zeros_like, state.params),
             jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape))
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(t.grad_accum), micro_A))
    return grads, sums


def train_step(state: TrainState, batch: dict, *, model: Transformer, optimizer: optax.GradientTransformation,
               objective: Objective, cfg: Config, trainable=None) -> tuple[TrainState, dict]:
    """One optimizer step over the global batch, accumulated over `grad_accum` microbatches.

    Gradients of summed losses are added and divided by the total `weight`, so k microbatches give the same update
    as one batch k times larger. With `train.spike_factor`, an update whose loss exceeds that many times the running
    mean is skipped (params and optimizer state kept) and counted. With `train.ema_decay`, the moving average of the
    params moves toward the new params (the kept ones after a skipped update)."""
    new_state, metrics, _, _ = _step_with_terms(state, batch, model=model, optimizer=optimizer, objective=objective,
                                                cfg=cfg, trainable=trainable)
    return new_state, metrics


def stats_step(state: TrainState, batch: dict, *, model: Transformer, optimizer: optax.GradientTransformation,
               objective: Objective, cfg: Config, trainable=None) -> tuple[TrainState, dict]:
    """`train_step` (the same new state, bit for bit) with the per-layer statistics of `gptjax.train.stats` added to
    its metrics: for train.stats_every's steps only, so the plain step never computes them."""
    new_state, metrics, grads, updates = _step_with_terms(state, batch, model=model, optimizer=optimizer,
                                                          objective=objective, cfg=cfg, trainable=trainable)
    metrics.update(stats.layer_stats(state.params, grads, updates))
    if isinstance(objective, NextTokenLM):  # the first microbatch's rows, the most one forward pass is sized for
        first_micro = jax.tree_util.tree_map(lambda x_B: x_B[::cfg.train.grad_accum], batch)
        metrics.update(stats.attention_logit_max(model, state.params, objective.model_inputs(first_micro)))
    return new_state, metrics


def _step_with_terms(state: TrainState, batch: dict, *, model: Transformer, optimizer: optax.GradientTransformation,
                     objective: Objective, cfg: Config, trainable=None) -> tuple[TrainState, dict, Any, Any]:
    """`train_step`'s (new state, metrics), and the batch-mean gradients and the optimizer's updates it applied."""
    t = cfg.train
    grads, sums = _summed_grads(state, batch, model=model, objective=objective, cfg=cfg, trainable=trainable)
    weight = jnp.maximum(sums["weight"], 1e-9)
    grads = jax.tree_util.tree_map(lambda g: g / weight, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {k: v / weight for k, v in sums.items() if k != "weight"}
    metrics.update(grad_norm=optax.tree.norm(grads), lr=lr_schedule(t)(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    if t.spike_factor:
        loss = metrics["loss"]
        spike = (state.loss_ema > 0) & (loss > t.spike_factor * state.loss_ema)
        keep_old = lambda new, old: jnp.where(spike, old, new)
        new_state = new_state.replace(
            params=jax.tree_util.tree_map(keep_old, params, state.params),
            opt_state=jax.tree_util.tree_map(keep_old, opt_state, state.opt_state),
            loss_ema=jnp.where(spike, state.loss_ema,
                               jnp.where(state.loss_ema > 0,
                                         SPIKE_EMA * state.loss_ema + (1 - SPIKE_EMA) * loss, loss)),
            skipped_steps=state.skipped_steps + spike.astype(jnp.int32))
        metrics["skipped_steps"] = new_state.skipped_steps
    if t.ema_decay:
        new_state = new_state.replace(ema_params=jax.tree_util.tree_map(
            lambda ema, p: t.ema_decay * ema + (1 - t.ema_decay) * p, state.ema_params, new_state.params))
    return new_state, metrics, grads, updates


def eval_step(params, frozen, batch: dict, *, model: Transformer, objective: Objective) -> dict:
    """The objective's summed metrics (including `weight`) over a batch, deterministic."""
    _, sums = objective(params, frozen, model, batch, None)
    return sums


def all_finite(tree) -> jax.Array:
    """True when every float leaf of `tree` is finite (one fused reduction)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


def healthy(params, frozen, batch: dict, *, model: Transformer, objective: Objective) -> jax.Array:
    """True when `params` are finite and give a finite loss and gradient on `batch`: safe to checkpoint."""
    grads, sums = jax.grad(lambda p: objective(p, frozen, model, batch, None), has_aux=True)(params)
    return all_finite(params) & jnp.isfinite(sums["loss"]) & all_finite(grads)


@dataclasses.dataclass(frozen=True)
class Step:
    """A run's compiled functions and what they expect: the state's shardings and abstract form, the batch format."""

    cfg: Config
    mesh: Mesh
    model: Transformer
    optimizer: optax.GradientTransformation
    objective: Objective
    shardings: TrainState
    abstract_state: TrainState
    batch_sharding: NamedSharding
    format_batch: Callable[[Any], dict]
    train_jit: Callable
    eval_jit: Callable
    healthy_jit: Callable
    stats_jit: Callable  # compiled on first use: train_jit with the per-layer statistics (train.stats_every)

    def train(self, state: TrainState, batch: dict, with_stats: bool = False) -> tuple[TrainState, dict]:
        """One step; `with_stats` adds the per-layer statistics (`stats/...`) to its metrics, the state the same."""
        with use_rules(self.mesh):
            return (self.stats_jit if with_stats else self.train_jit)(state, batch)

    def evaluate(self, params, frozen, batch: dict) -> dict:
        with use_rules(self.mesh):
            return self.eval_jit(params, frozen, batch)

    def healthy(self, params, frozen, batch: dict) -> bool:
        """Finite params, loss and gradient on `batch` (the checkpoint guard against NaN/inf)."""
        with use_rules(self.mesh):
            return bool(self.healthy_jit(params, frozen, batch))

    def init_state(self, frozen=None) -> TrainState:
        return create_state(self.model, self.optimizer, self.cfg, self.mesh, self.shardings, frozen)

    def to_global(self, local_batch: dict) -> dict:
        """Assembles each process's rows of a host batch (already formatted) into global sharded arrays."""
        return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x),
                                      local_batch)

    def abstract_batch(self, global_batch: int) -> dict:
        """ShapeDtypeStructs (with shardings) of one global training batch, for ahead-of-time lowering."""
        if self.cfg.train.objective in FINETUNE_OBJECTIVES:
            from gptjax.finetune.batches import example_batch

            example = example_batch(self.cfg.train.objective, global_batch, self.cfg.model.block_size,
                                    self.cfg.finetune.pack)
        else:
            example = self.format_batch(np.zeros((global_batch, self.cfg.model.block_size + 1), np.int32))
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.batch_sharding), example)

    def lower_train(self):
        """The train step lowered for the abstract state and batch (`.compile()` it, read its memory analysis)."""
        state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                       self.abstract_state, self.shardings)
        with use_rules(self.mesh):
            return self.train_jit.lower(state, self.abstract_batch(self.cfg.train.batch_size))


def build_step(cfg: Config, mesh: Mesh, *, objective: Objective | None = None, trainable=None,
               frozen_example=None) -> Step:
    """The jitted, sharded train and eval steps for `cfg` on `mesh`.

    `objective` defaults to `train.objective`; `trainable` (a bool tree shaped like the params) freezes the False
    leaves (no gradient, no optimizer state); `frozen_example` (a params-shaped tree, e.g. a DPO reference) is
    carried in the state beside the trainable params, sharded like them."""
    check_experts_divide(cfg.model, mesh.shape["fsdp"])
    model = Transformer(cfg.model)
    optimizer = run_optimizer(cfg, trainable)
    objective = objective or make_objective(cfg)
    shardings, abstract_state = state_shardings(model, optimizer, cfg, mesh, frozen_example)
    in_sharding = batch_sharding(mesh)

    def jit_step(step_fn):
        bound = functools.partial(step_fn, model=model, optimizer=optimizer, objective=objective, cfg=cfg,
                                  trainable=trainable)
        return jax.jit(bound, in_shardings=(shardings, in_sharding), out_shardings=(shardings, None),
                       donate_argnums=0)

    train_jit, stats_jit = jit_step(train_step), jit_step(stats_step)
    eval_jit = jax.jit(functools.partial(eval_step, model=model, objective=objective),
                       in_shardings=(shardings.params, shardings.frozen, in_sharding))
    healthy_jit = jax.jit(functools.partial(healthy, model=model, objective=objective),
                          in_shardings=(shardings.params, shardings.frozen, in_sharding))
    return Step(cfg=cfg, mesh=mesh, model=model, optimizer=optimizer, objective=objective, shardings=shardings,
                abstract_state=abstract_state, batch_sharding=in_sharding, format_batch=batch_format(cfg.train),
                train_jit=train_jit, eval_jit=eval_jit, healthy_jit=healthy_jit, stats_jit=stats_jit)

