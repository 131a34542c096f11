"""Pure train and eval steps: (state, batch) -> (state, metrics). No I/O, no Python state."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gptjax.config import Config
from gptjax.model.losses import token_nll
from gptjax.model.transformer import Transformer
from gptjax.parallel.rules import constrain
from gptjax.train.optim import lr_schedule
from gptjax.train.state import TrainState


def split_batch(batch) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """(tokens, segment ids, positions), each [B, T+1]; a plain array is a batch of windows (no segments)."""
    if isinstance(batch, dict):
        return batch["tokens"], batch.get("segment_ids"), batch.get("positions")
    return batch, None, None


def summed_loss(params, model: Transformer, batch, rng: jax.Array | None, z_loss: float):
    """Sum over target tokens of NLL (+ z-loss); returns (objective, (nll_sum, token_count)).

    With segment ids (packed documents), a target counts only inside its input's document; segment 0 is padding."""
    tokens_BT1, segments_BT1, positions_BT1 = split_batch(batch)
    inputs_BT = constrain(tokens_BT1[:, :-1], ("batch", "act_length"))
    targets_BT = tokens_BT1[:, 1:]
    segments_BT = positions_BT = None
    if segments_BT1 is not None:
        segments_BT = segments_BT1[:, :-1]
        positions_BT = positions_BT1[:, :-1]
        weights_BT = ((segments_BT1[:, 1:] == segments_BT) & (segments_BT != 0)).astype(jnp.float32)
    else:
        weights_BT = jnp.ones(targets_BT.shape, jnp.float32)
    rngs = {"dropout": rng} if rng is not None else {}
    logits_BTV = model.apply({"params": params}, inputs_BT, positions_BT, segments_BT, deterministic=rng is None,
                             rngs=rngs)
    nll_BT, log_z_BT = token_nll(logits_BTV, targets_BT)
    nll_sum = (nll_BT * weights_BT).sum()
    objective = nll_sum + z_loss * (jnp.square(log_z_BT) * weights_BT).sum() if z_loss else nll_sum
    return objective, (nll_sum, weights_BT.sum())


def train_step(state: TrainState, batch_BT1: jax.Array, *, model: Transformer, optimizer: optax.GradientTransformation,
               cfg: Config) -> tuple[TrainState, dict]:
    """One optimizer step over the global batch, accumulated over `grad_accum` microbatches.

    Gradients of summed losses are added and divided by the total token count, so k microbatches give the same
    update as one batch k times larger."""
    t = cfg.train
    dropout_on = cfg.model.dropout > 0.0
    step_rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.grad(summed_loss, has_aux=True)

    if t.grad_accum == 1:
        grads, (nll_sum, count) = grad_fn(state.params, model, batch_BT1, step_rng if dropout_on else None, t.z_loss)
    else:
        # Microbatch a takes rows a, a+A, a+2A, ...: each keeps an even share on every data-parallel device.
        def to_micro(x_BT1):
            b, t1 = x_BT1.shape
            return x_BT1.reshape(b // t.grad_accum, t.grad_accum, t1).swapaxes(0, 1)

        micro_AMT1 = jax.tree_util.tree_map(to_micro, batch_BT1)

        def accumulate(carry, xs):
            grads_acc, nll_acc, count_acc = carry
            index, micro_MT1 = xs
            rng = jax.random.fold_in(step_rng, index) if dropout_on else None
            g, (nll, cnt) = grad_fn(state.params, model, micro_MT1, rng, t.z_loss)
            return (jax.tree_util.tree_map(jnp.add, grads_acc, g), nll_acc + nll, count_acc + cnt), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        (grads, nll_sum, count), _ = jax.lax.scan(
            accumulate, (zeros, jnp.float32(0.0), jnp.float32(0.0)), (jnp.arange(t.grad_accum), micro_AMT1))

    grads = jax.tree_util.tree_map(lambda g: g / count, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": nll_sum / count, "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(t)(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch_BT1: jax.Array, *, model: Transformer) -> tuple[jax.Array, jax.Array]:
    """(summed NLL, token count) of a batch, deterministic."""
    _, (nll_sum, count) = summed_loss(params, model, batch_BT1, None, 0.0)
    return nll_sum, count
