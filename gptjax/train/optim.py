"""Learning-rate schedules and the AdamW optimizer (decay on >=2-D weights only, global-norm clipping,
per-leaf learning-rate multipliers for μP)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from gptjax.config import TrainConfig


def lr_schedule(t: TrainConfig) -> optax.Schedule:
    """Linear warmup, then cosine to min_lr (nanoGPT's formula), warmup-stable-decay, or constant.

    The schedule spans `train.schedule_steps` (0 = `train.steps`); a resumed run keeps the horizon of the run that
    started it, so extending `train.steps` never reshapes the steps already taken."""
    horizon = schedule_horizon(t)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = t.lr * (step + 1) / (t.warmup_steps + 1)
        if t.schedule == "constant":
            after = jnp.asarray(t.lr, jnp.float32)
        elif t.schedule == "cosine":
            decay_end = t.decay_steps or horizon
            ratio = jnp.clip((step - t.warmup_steps) / max(decay_end - t.warmup_steps, 1), 0.0, 1.0)
            after = t.min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (t.lr - t.min_lr)
        else:
            decay_len = t.decay_steps or max(horizon // 5, 1)
            decay_start = horizon - decay_len
            ratio = jnp.clip((step - decay_start) / decay_len, 0.0, 1.0)
            after = t.lr + ratio * (t.min_lr - t.lr)
        return jnp.where(step < t.warmup_steps, warm, after)

    return schedule


def schedule_horizon(t: TrainConfig) -> int:
    return t.schedule_steps or t.steps


def decay_mask(params):
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def scale_by_multipliers(multiplier_of: Callable[[tuple], float]) -> optax.GradientTransformation:
    """Multiplies each update leaf by `multiplier_of(key path)` (a Python float fixed at trace time); no state.

    Key paths, not a params-shaped tree: inside `optax.multi_transform` the frozen leaves are MaskedNodes, and the
    paths of the leaves left are the params' own."""

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(lambda path, u: u * multiplier_of(path), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def adamw(t: TrainConfig, lr_multipliers: Callable[[tuple], float] | None = None) -> optax.GradientTransformation:
    """optax.adamw's chain (Adam direction, decoupled decay on >=2-D weights, -lr), with per-leaf multipliers on
    the Adam direction when given: lr·multiplier for the step, lr·wd for the decay (the `mup` package's MuAdamW)."""
    direction = [optax.scale_by_adam(b1=t.beta1, b2=t.beta2, eps=t.eps)]
    if lr_multipliers is not None:
        direction.append(scale_by_multipliers(lr_multipliers))
    return optax.chain(*direction, optax.add_decayed_weights(t.weight_decay, decay_mask),
                       optax.scale_by_learning_rate(lr_schedule(t)))


def make_optimizer(t: TrainConfig, trainable=None,
                   lr_multipliers: Callable[[tuple], float] | None = None) -> optax.GradientTransformation:
    """AdamW after global-norm clipping; with a `trainable` bool tree, frozen leaves get no update and no state;
    with `lr_multipliers` (key path -> float, e.g. `gptjax.model.mup.adam_lr_multipliers`), per-leaf learning rates.

    The state's structure does not depend on the values of the optimizer settings (clipping is always in the chain,
    inf when off; the multipliers add one stateless stage whatever their values), so a resumed run may change lr,
    clipping, decay or betas and still restore its moments."""
    optimizer = optax.chain(
        optax.clip_by_global_norm(t.grad_clip if t.grad_clip > 0 else float("inf")),
        adamw(t, lr_multipliers))
    if trainable is None:
        return optimizer
    labels = jax.tree_util.tree_map(lambda keep: "train" if keep else "frozen", trainable)
    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
