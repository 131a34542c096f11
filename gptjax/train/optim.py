"""Learning-rate schedules and the AdamW optimizer (decay on >=2-D weights only, global-norm clipping)."""
from __future__ import annotations

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


def make_optimizer(t: TrainConfig, trainable=None) -> optax.GradientTransformation:
    """AdamW after global-norm clipping; with a `trainable` bool tree, frozen leaves get no update and no state.

    The state's structure does not depend on the values of the optimizer settings (clipping is always in the chain,
    inf when off), so a resumed run may change lr, clipping, decay or betas and still restore its moments."""
    adamw = optax.chain(
        optax.clip_by_global_norm(t.grad_clip if t.grad_clip > 0 else float("inf")),
        optax.adamw(lr_schedule(t), b1=t.beta1, b2=t.beta2, eps=t.eps, weight_decay=t.weight_decay, mask=decay_mask))
    if trainable is None:
        return adamw
    labels = jax.tree_util.tree_map(lambda keep: "train" if keep else "frozen", trainable)
    return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)
