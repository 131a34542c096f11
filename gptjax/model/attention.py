"""Causal self-attention: masks for each pattern, interchangeable kernels, and an explicit KV cache.

Masks are defined on token positions and segment ids, so the same definition serves training windows, packed
documents (segments never attend to each other) and left-padded batched decoding (padding is segment 0).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from gptjax.config import ModelConfig
from gptjax.errors import GptjaxError
from gptjax.model.layers import Dense, apply_rope, dropout
from gptjax.parallel.rules import constrain


class KVCache(NamedTuple):
    """Decoding state. k and v are stacked over layers; positions and segments are shared by all layers."""

    k_LBSGK: jax.Array
    v_LBSGK: jax.Array
    pos_BS: jax.Array  # position of the token held in each slot
    seg_BS: jax.Array  # segment id per slot; 0 = empty or padding
    index: jax.Array  # number of slots filled (the same for every row)


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> KVCache:
    """An empty cache with room for `max_len` tokens per row."""
    dtype = jnp.dtype(cfg.dtype)
    kv_shape = (cfg.n_layer, batch, max_len, cfg.kv_heads, cfg.head_dim)
    return KVCache(
        k_LBSGK=jnp.zeros(kv_shape, dtype),
        v_LBSGK=jnp.zeros(kv_shape, dtype),
        pos_BS=jnp.zeros((batch, max_len), jnp.int32),
        seg_BS=jnp.zeros((batch, max_len), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


def pattern_allows(q_pos, k_pos, pattern: str, window: int, stride: int):
    """The attention pattern's rule on (query position, key position), causality included. Broadcasts."""
    causal = k_pos <= q_pos
    if pattern == "local":
        return causal & (q_pos - k_pos < window)
    if pattern == "strided":
        same_block = (q_pos // stride) == (k_pos // stride)
        summary = (k_pos % stride) == (stride - 1)
        return causal & (same_block | summary)
    return causal


def attention_mask(q_pos_BT, k_pos_BS, q_seg_BT, k_seg_BS, cfg: ModelConfig) -> jax.Array:
    """Boolean [B, T, S]: query t may attend to key s."""
    allowed = pattern_allows(q_pos_BT[:, :, None], k_pos_BS[:, None, :], cfg.attention, cfg.window, cfg.stride)
    return allowed & (q_seg_BT[:, :, None] == k_seg_BS[:, None, :])


def xla_attention(q_BTNK, k_BSGK, v_BSGK, mask_BTS, bias_BNTS=None, dropout_rng=None, dropout_rate=0.0):
    """Reference attention in plain jnp: float32 softmax, optional additive bias and dropout.

    KV heads are repeated up to the query heads (GQA/MQA) so every contraction is a plain 4-D batched matmul:
    XLA's CPU backend runs the 5-D grouped form ~3x slower, and the repeat's gradient is a cheap sum."""
    n, k = q_BTNK.shape[2], q_BTNK.shape[3]
    repeats = n // k_BSGK.shape[2]
    k_BSNK = jnp.repeat(k_BSGK, repeats, axis=2) if repeats > 1 else k_BSGK
    v_BSNK = jnp.repeat(v_BSGK, repeats, axis=2) if repeats > 1 else v_BSGK
    logits_BNTS = jnp.einsum("btnk,bsnk->bnts", q_BTNK, k_BSNK, preferred_element_type=jnp.float32) * (k ** -0.5)
    if bias_BNTS is not None:
        logits_BNTS = logits_BNTS + bias_BNTS
    logits_BNTS = jnp.where(mask_BTS[:, None], logits_BNTS, jnp.finfo(jnp.float32).min)
    probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1)
    if dropout_rng is not None and dropout_rate > 0.0:
        probs_BNTS = dropout(probs_BNTS, dropout_rate, dropout_rng)
    out_BTNK = jnp.einsum("bnts,bsnk->btnk", probs_BNTS.astype(v_BSNK.dtype), v_BSNK,
                          preferred_element_type=jnp.float32)
    return out_BTNK.astype(q_BTNK.dtype)


def kernel_unsupported_reason(impl: str, cfg: ModelConfig, decoding: bool, dropout: bool, packed: bool) -> str | None:
    """Why `impl` cannot serve this config (None if it can). Only `xla` serves everything."""
    if impl == "xla":
        return None
    platform = jax.devices()[0].platform
    wanted = {"cudnn": "gpu", "splash": "tpu"}[impl]
    if platform != wanted:
        return f"attention_impl='{impl}' needs a {wanted.upper()}, this process runs on {platform}"
    if decoding:
        return f"attention_impl='{impl}' has no KV-cache decode path"
    if dropout:
        return f"attention_impl='{impl}' does not apply attention dropout"
    if cfg.position == "alibi":
        return f"attention_impl='{impl}' does not take the ALiBi bias"
    if packed:
        return f"attention_impl='{impl}' does not take segment ids or custom positions"
    if impl == "cudnn" and cfg.attention == "strided":
        return "attention_impl='cudnn' supports dense and local patterns, not strided"
    if impl == "cudnn" and cfg.dtype == "float32":
        return "attention_impl='cudnn' needs model.dtype bfloat16 or float16"
    return None


def choose_kernel(cfg: ModelConfig, decoding: bool, dropout: bool, packed: bool) -> str:
    """The kernel to run: the configured one (or a clear error), or under 'auto' the fastest that fits."""
    if cfg.attention_impl == "auto":
        platform = jax.devices()[0].platform
        preferred = {"gpu": "cudnn", "tpu": "splash"}.get(platform, "xla")
        if kernel_unsupported_reason(preferred, cfg, decoding, dropout, packed) is None:
            return preferred
        return "xla"
    reason = kernel_unsupported_reason(cfg.attention_impl, cfg, decoding, dropout, packed)
    if reason:
        raise GptjaxError(f"{reason}; use model.attention_impl=xla or auto")
    return cfg.attention_impl


def cudnn_attention(q_BTNK, k_BSGK, v_BSGK, cfg: ModelConfig, implementation: str | None = "cudnn"):
    """Fused attention through jax.nn.dot_product_attention (cuDNN flash attention on NVIDIA GPUs)."""
    window = (cfg.window - 1, 0) if cfg.attention == "local" else None
    return jax.nn.dot_product_attention(
        q_BTNK, k_BSGK, v_BSGK, is_causal=True, local_window_size=window, implementation=implementation
    )


@functools.lru_cache(maxsize=16)
def _splash_kernel(cfg: ModelConfig, seq_len: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    pos = np.arange(seq_len)
    dense = pattern_allows(pos[:, None], pos[None, :], cfg.attention, cfg.window, cfg.stride)
    head_mask = sm.NumpyMask(np.asarray(dense))
    mask = sm.MultiHeadMask([head_mask] * cfg.n_head)
    return sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q_BTNK, k_BSGK, v_BSGK, cfg: ModelConfig, interpret: bool = False):
    """TPU Pallas splash attention; its block-sparse mask is built from the same `pattern_allows` rule."""
    repeats = q_BTNK.shape[2] // k_BSGK.shape[2]
    k_BSNK = jnp.repeat(k_BSGK, repeats, axis=2)
    v_BSNK = jnp.repeat(v_BSGK, repeats, axis=2)
    kernel = _splash_kernel(cfg, q_BTNK.shape[1], interpret)
    scaled_q = q_BTNK * (q_BTNK.shape[-1] ** -0.5)
    to_heads_first = lambda x: jnp.swapaxes(x, 1, 2)
    out_BNTK = jax.vmap(kernel)(to_heads_first(scaled_q), to_heads_first(k_BSNK), to_heads_first(v_BSNK))
    return jnp.swapaxes(out_BNTK, 1, 2).astype(q_BTNK.dtype)


class AttnContext(NamedTuple):
    """Per-forward inputs every layer's attention shares (computed once, broadcast over layers)."""

    mask_BTS: jax.Array
    bias_BNTS: jax.Array | None
    rope_cos_BTH: jax.Array | None
    rope_sin_BTH: jax.Array | None
    cache_index: jax.Array | None


class Attention(nn.Module):
    """Multi-head causal self-attention with grouped KV heads (MHA/GQA/MQA)."""

    cfg: ModelConfig
    out_std: float
    kernel: str = "xla"
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BTD, ctx: AttnContext, layer_cache: tuple | None):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        n, g, k = cfg.n_head, cfg.kv_heads, cfg.head_dim

        def proj(heads, axes, name):
            return Dense((heads, k), ("embed", axes, "head_dim"), use_bias=cfg.use_bias, init_std=cfg.init_std,
                         dtype=dtype, name=name)

        q_BTNK = proj(n, "heads", "query")(x_BTD)
        k_BTGK = proj(g, "kv_heads", "key")(x_BTD)
        v_BTGK = proj(g, "kv_heads", "value")(x_BTD)
        q_BTNK = constrain(q_BTNK, ("batch", "act_length", "act_heads", None))
        k_BTGK = constrain(k_BTGK, ("batch", "act_length", "act_kv_heads", None))
        v_BTGK = constrain(v_BTGK, ("batch", "act_length", "act_kv_heads", None))
        if ctx.rope_cos_BTH is not None:
            q_BTNK = apply_rope(q_BTNK, ctx.rope_cos_BTH, ctx.rope_sin_BTH)
            k_BTGK = apply_rope(k_BTGK, ctx.rope_cos_BTH, ctx.rope_sin_BTH)

        new_cache = None
        if layer_cache is not None:
            cache_k_BSGK, cache_v_BSGK = layer_cache
            start = (0, ctx.cache_index, 0, 0)
            cache_k_BSGK = jax.lax.dynamic_update_slice(cache_k_BSGK, k_BTGK.astype(cache_k_BSGK.dtype), start)
            cache_v_BSGK = jax.lax.dynamic_update_slice(cache_v_BSGK, v_BTGK.astype(cache_v_BSGK.dtype), start)
            new_cache = (cache_k_BSGK, cache_v_BSGK)
            k_BSGK, v_BSGK = cache_k_BSGK, cache_v_BSGK
        else:
            k_BSGK, v_BSGK = k_BTGK, v_BTGK

        dropout_rng = None
        if not self.deterministic and cfg.dropout > 0.0:
            dropout_rng = self.make_rng("dropout")
        if self.kernel == "cudnn":
            out_BTNK = cudnn_attention(q_BTNK, k_BSGK, v_BSGK, cfg)
        elif self.kernel == "splash":
            out_BTNK = splash_attention(q_BTNK, k_BSGK, v_BSGK, cfg)
        else:
            out_BTNK = xla_attention(q_BTNK, k_BSGK, v_BSGK, ctx.mask_BTS, ctx.bias_BNTS, dropout_rng, cfg.dropout)
        out_BTNK = checkpoint_name(constrain(out_BTNK, ("batch", "act_length", "act_heads", None)), "attn_out")
        out_BTD = Dense((cfg.d_model,), ("heads", "head_dim", "embed"), n_in=2, use_bias=cfg.use_bias,
                        init_std=self.out_std, dtype=dtype, name="out")(out_BTNK)
        return out_BTD, new_cache
