"""Learning-rate schedules and the AdamW optimizer (decay on >=2-D weights only, global-norm clipping)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gptjax.config import TrainConfig


def lr_schedule(t: TrainConfig) -> optax.Schedule:
    """Linear warmup, then cosine to min_lr (nanoGPT's formula), warmup-stable-decay, or constant."""

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = t.lr * (step + 1) / (t.warmup_steps + 1)
        if t.schedule == "constant":
            after = jnp.asarray(t.lr, jnp.float32)
        elif t.schedule == "cosine":
            decay_end = t.decay_steps or t.steps
            ratio = jnp.clip((step - t.warmup_steps) / max(decay_end - t.warmup_steps, 1), 0.0, 1.0)
            after = t.min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (t.lr - t.min_lr)
        else:
            decay_len = t.decay_steps or max(t.steps // 5, 1)
            decay_start = t.steps - decay_len
            ratio = jnp.clip((step - decay_start) / decay_len, 0.0, 1.0)
            after = t.lr + ratio * (t.min_lr - t.lr)
        return jnp.where(step < t.warmup_steps, warm, after)

    return schedule


def decay_mask(params):
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(t: TrainConfig) -> optax.GradientTransformation:
    parts = []
    if t.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(t.grad_clip))
    parts.append(optax.adamw(lr_schedule(t), b1=t.beta1, b2=t.beta2, eps=t.eps, weight_decay=t.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts)
