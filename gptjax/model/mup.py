"""μP, the maximal-update parametrization (Yang et al. 2022, "Tensor Programs V"), as multipliers on SP.

`model.parametrization="mup"` with `model.mup_base_width` B (0 = d_model) and width multiplier m = d_model / B
changes four things, following the `mup` package (MuReadout / MuSharedReadout, `attn_mult`, MuAdam):

- hidden matrices (every Dense kernel inside the blocks: query/key/value/out, fc/gate/up/proj) start with std
  `init_std / sqrt(m)` (their fan-in grows with m); embeddings, the untied lm_head and the classifier keep `init_std`;
- the output logits are multiplied by 1/m (tied or not: with tied embeddings the embedding stays an input-like
  parameter and the readout multiplier goes on the logits, as MuSharedReadout does);
- attention scores are scaled by `attn_mult / head_dim` with `attn_mult = sqrt(base_head_dim)`, the base model having
  the same n_head (base_head_dim = B / n_head), i.e. `1 / (sqrt(head_dim) · sqrt(m))`: 1/head_dim as the width
  grows, exactly SP's 1/sqrt(head_dim) at m = 1;
- Adam's learning rate for the hidden matrices is lr / m; embeddings, lm_head, biases, norm gains, LoRA adapters and
  the classifier keep lr; decoupled weight decay stays lr·wd per step (MuAdamW with its default decoupled_wd=False).

At m = 1 every multiplier is exactly 1.0, so μP at its base width computes what SP computes, bit for bit.
"""
from __future__ import annotations

import math
from typing import Callable

import jax

from gptjax.config import ModelConfig

KeyPath = tuple  # a jax.tree_util key path, e.g. (DictKey('layer_0'), DictKey('attn'), DictKey('query'), ...)
HIDDEN_MATRIX_NAME = "kernel"  # the Dense weight; top-level matrices are named embedding, lm_head, classifier_kernel


def width_multiplier(cfg: ModelConfig) -> float:
    """m = d_model / mup_base_width under mup (1.0 under sp or with base width 0)."""
    if cfg.parametrization != "mup" or not cfg.mup_base_width:
        return 1.0
    return cfg.d_model / cfg.mup_base_width


def hidden_init_std(cfg: ModelConfig, std: float) -> float:
    """The init std of a hidden matrix whose SP std is `std`: std / sqrt(m)."""
    return std / math.sqrt(width_multiplier(cfg))


def output_multiplier(cfg: ModelConfig) -> float:
    """What the output logits are multiplied by: 1/m."""
    return 1.0 / width_multiplier(cfg)


def attention_scale(head_dim: int, cfg: ModelConfig) -> float:
    """The scale of q·k for heads of `head_dim` (cfg.head_dim in the model): 1/sqrt(head_dim) under sp,
    sqrt(base_head_dim)/head_dim = 1/(sqrt(head_dim)·sqrt(m)) under mup."""
    return head_dim ** -0.5 / math.sqrt(width_multiplier(cfg))


def is_hidden_matrix(path: KeyPath) -> bool:
    """Whether a param's key path names a Dense kernel (a hidden matrix, both dims growing with width)."""
    return bool(path) and getattr(path[-1], "key", None) == HIDDEN_MATRIX_NAME


def adam_lr_multipliers(cfg: ModelConfig) -> Callable[[KeyPath], float] | None:
    """key path -> Adam lr multiplier (1/m on hidden matrices, 1 elsewhere) under mup; None under sp."""
    if cfg.parametrization != "mup":
        return None
    hidden = 1.0 / width_multiplier(cfg)
    return lambda path: hidden if is_hidden_matrix(path) else 1.0


def lr_multiplier_tree(cfg: ModelConfig, params):
    """The Adam lr multiplier of every leaf of `params` (a float tree shaped like it)."""
    multiplier_of = adam_lr_multipliers(cfg) or (lambda path: 1.0)
    return jax.tree_util.tree_map_with_path(lambda path, _: multiplier_of(path), params)
