"""Which params a finetune trains (`finetune.freeze`), and which are new to it (not in the `train.init_from` model).

none: all. all: only the new heads (the classifier). last_n_blocks:N: the last N Transformer blocks, the final norm,
an untied output head and the new heads (rasbt's ch06 recipe). lora: the LoRA adapters and the new heads.
"""
from __future__ import annotations

from typing import Any

import jax

from gptjax.config import ModelConfig, freeze_policy
from gptjax.model.lora import ADAPTER_NAMES

HEAD_NAMES = ("classifier_kernel", "classifier_bias")  # params the classify objective adds on top of a base model


def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path)


def is_new_param(path) -> bool:
    """True for params a base model does not have: LoRA adapters and the classifier head."""
    names = _names(path)
    return names[-1] in ADAPTER_NAMES or names[0] in HEAD_NAMES


def trainable_mask(freeze: str, model_cfg: ModelConfig, params: Any, train_embeddings: bool = False) -> Any | None:
    """A bool tree shaped like `params` (True = trains) for the policy `freeze`, or None when everything trains.
    `train_embeddings` also trains the token embedding and an untied output head (new tokens must learn theirs)."""
    kind, blocks = freeze_policy(freeze)
    if kind == "none":
        return None
    last_blocks = {f"layer_{i}" for i in range(model_cfg.n_layer - blocks, model_cfg.n_layer)}

    def trains(path, _) -> bool:
        names = _names(path)
        if names[0] in HEAD_NAMES or (train_embeddings and names[0] in ("embedding", "lm_head")):
            return True
        if kind == "lora":
            return names[-1] in ADAPTER_NAMES
        if kind == "last_n_blocks":
            return names[0] in last_blocks or names[0] in ("norm_f", "lm_head")
        return False

    return jax.tree_util.tree_map_with_path(trains, params)


def count_trainable(params: Any, mask: Any | None) -> int:
    leaves = jax.tree_util.tree_leaves(params)
    if mask is None:
        return sum(int(x.size) for x in leaves)
    return sum(int(x.size) for x, keep in zip(leaves, jax.tree_util.tree_leaves(mask)) if keep)
