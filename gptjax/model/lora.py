"""LoRA (Hu et al. 2021): a low-rank update x·A·B · alpha/rank beside a frozen matmul, as peft defines it.

A is initialised like peft's (Kaiming-uniform, bound 1/sqrt(fan_in)), B as zeros, so an adapted model starts equal to
its base. Adapters live in the params tree beside the kernel they adapt (`lora_a`, `lora_b`); `merge_lora` folds them
into the kernels for export, and `adapter_mask` says which leaves they are (the trainable set of a LoRA finetune).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.config import ModelConfig

ADAPTER_NAMES = ("lora_a", "lora_b")
# Dense module names in the model per LoRA target (gptjax/model/attention.py, gptjax/model/layers.py Mlp)
TARGET_MODULES = {"q": ("query",), "k": ("key",), "v": ("value",), "o": ("out",), "mlp": ("fc", "proj", "gate", "up")}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    dropout: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_spec(cfg: ModelConfig, target: str) -> LoraSpec | None:
    """The adapter a matmul of LoRA target `target` gets under `cfg`, or None."""
    if cfg.lora_rank == 0 or target not in cfg.lora_targets:
        return None
    return LoraSpec(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)


def lora_a_init(fan_in: int):
    """peft's A init: kaiming_uniform(a=sqrt(5)) on torch's [rank, fan_in] weight = uniform(±1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def adapter_mask(params) -> Any:
    """A bool tree shaped like `params`: True on LoRA adapter leaves."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in ADAPTER_NAMES, params)


def merge_lora(params: dict, cfg: ModelConfig) -> tuple[dict, ModelConfig]:
    """(params with every adapter folded into its kernel, the config without LoRA): W' = W + A·B · alpha/rank."""
    if cfg.lora_rank == 0:
        return params, cfg
    scale = cfg.lora_alpha / cfg.lora_rank

    def fold(node):
        if not isinstance(node, dict):
            return node
        node = {k: fold(v) for k, v in node.items()}
        if "lora_a" not in node:
            return node
        a, b, kernel = (np.asarray(node[k], np.float32) for k in ("lora_a", "lora_b", "kernel"))
        return {k: v for k, v in node.items() if k not in ADAPTER_NAMES} | {"kernel": _merged(a, b, kernel, scale)}

    return fold(dict(params)), dataclasses.replace(cfg, lora_rank=0)


def _merged(a: np.ndarray, b: np.ndarray, kernel: np.ndarray, scale: float) -> np.ndarray:
    """kernel [*in, *out] + scale · A [*in, r] · B [r, *out]; scanned layers carry a leading layer axis on all three."""
    if kernel.ndim == a.ndim + b.ndim - 3:
        return np.stack([_merged(a[i], b[i], kernel[i], scale) for i in range(kernel.shape[0])])
    delta = a.reshape(-1, a.shape[-1]) @ b.reshape(b.shape[0], -1)
    return (kernel + scale * delta.reshape(kernel.shape)).astype(np.float32)
