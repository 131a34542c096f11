"""Per-layer statistics of a train step (train.stats_every): the RMS of each module's params, gradients and
optimizer updates, their update/param ratio, and each layer's max |attention logit|.

Computed inside the jitted stats twin of the train step (`gptjax.train.step`), on the steps they are due only, and
returned as scalar metrics `stats/<kind>/<module>`, where a module is a param path without the param's own name
(`layer_3/attn/query`). Scanned layers (model.scan_layers) hold their params stacked on a leading layer axis under
`layers/`; they are split along it, so each layer has its own row, named as an unrolled layer is.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from gptjax.model.attention import INTERMEDIATES, LOGIT_MAX
from gptjax.model.transformer import Transformer

PREFIX = "stats/"
SCANNED = "layers"  # the params (and sown values) of scanned layers, stacked on a leading layer axis


def module_name(keys: tuple[str, ...]) -> str:
    """'layer_3/attn/query' for the param path ('layer_3', 'attn', 'query', 'kernel'); a param directly under the
    model (the embedding, lm_head) is a module of its own."""
    return "/".join(keys[:-1]) if len(keys) > 1 else keys[0]


def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path)


def module_rms(tree: Any) -> dict[str, jax.Array]:
    """The root-mean-square over all entries of each module's leaves (float32), per layer for scanned layers."""
    sums: dict[str, tuple[jax.Array, int]] = {}

    def add(name: str, square_sum: jax.Array, count: int) -> None:
        total, n = sums.get(name, (0.0, 0))
        sums[name] = (total + square_sum, n + count)

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = _keys(path)
        squares = jnp.square(leaf.astype(jnp.float32))
        if keys[0] == SCANNED:
            n_layer = leaf.shape[0]
            square_sum_L = squares.reshape(n_layer, -1).sum(axis=1)
            for layer in range(n_layer):
                add(module_name((f"layer_{layer}", *keys[1:])), square_sum_L[layer], leaf.size // n_layer)
        else:
            add(module_name(keys), squares.sum(), leaf.size)
    return {name: jnp.sqrt(total / max(n, 1)) for name, (total, n) in sums.items()}


def layer_stats(params: Any, grads: Any, updates: Any) -> dict[str, jax.Array]:
    """stats/{param_rms, grad_rms, update_rms, update_ratio}/<module>: `params` are those the step started from,
    `grads` the batch-mean gradients, `updates` what the optimizer added to the params."""
    param_rms, grad_rms, update_rms = module_rms(params), module_rms(grads), module_rms(updates)
    metrics = {}
    for name in param_rms:
        metrics[f"{PREFIX}param_rms/{name}"] = param_rms[name]
        metrics[f"{PREFIX}grad_rms/{name}"] = grad_rms[name]
        metrics[f"{PREFIX}update_rms/{name}"] = update_rms[name]
        metrics[f"{PREFIX}update_ratio/{name}"] = update_rms[name] / jnp.maximum(param_rms[name], 1e-12)
    return metrics


def sown_per_layer(sown: Mapping, name: str) -> dict[int, jax.Array]:
    """{layer index: value} of what each layer's attention sowed as `name` into `apply(..., mutable=[...])`'s
    collection: unrolled layers under layer_<i>/attn, scanned ones stacked under layers/attn."""
    if SCANNED in sown:
        stacked_L = sown[SCANNED]["attn"][name][0]
        return {layer: stacked_L[layer] for layer in range(stacked_L.shape[0])}
    return {int(layer.removeprefix("layer_")): values["attn"][name][0] for layer, values in sown.items()
            if "attn" in values and name in values["attn"]}


def attention_logit_max(model: Transformer, params: Any, inputs: tuple) -> dict[str, jax.Array]:
    """stats/attn_logit_max/layer_<i>: the max |attention logit| of each layer over a forward pass of `inputs`
    ((tokens, positions, segment ids), as the objective applies the model). Layers whose attention runs a fused
    kernel (cudnn, splash) never materialise the logits and have no row."""
    _, sown = model.apply({"params": params}, *inputs, mutable=[INTERMEDIATES])
    per_layer = sown_per_layer(sown.get(INTERMEDIATES, {}), LOGIT_MAX)
    return {f"{PREFIX}attn_logit_max/layer_{layer}": value for layer, value in sorted(per_layer.items())}


def is_stats_key(key: str) -> bool:
    return key.startswith(PREFIX)


def stats_due(stats_every: int, done: int) -> bool:
    """Whether step `done` (1-based) is one of train.stats_every's (never when it is 0)."""
    return stats_every > 0 and done % stats_every == 0
