"""Causal self-attention: masks for each pattern, interchangeable kernels, and an explicit KV cache.

Masks are defined on token positions and segment ids, so the same definition serves training windows, packed
documents (segments never attend to each other) and left-padded batched decoding (padding is segment 0).
The fused kernels (splash on TPU, cuDNN on GPU) run per device in shard_map over the mesh; `auto` picks them by the
platform of the mesh being compiled for (a compile-check topology too), and xla where they cannot serve a config.
"""
from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from gptjax.config import ModelConfig
from gptjax.errors import GptjaxError
from gptjax.model.layers import Dense, Norm, apply_rope, dropout
from gptjax.model.lora import lora_spec
from gptjax.model.mup import attention_scale, hidden_init_std
from gptjax.parallel.rules import constrain, spec_for, target_platform


class KVCache(NamedTuple):
    """Decoding state. k and v are stacked over layers (or tuples of per-layer buffers, which a decode loop updates
    in place); positions and segments are shared by all layers. Slots lie [kv head, slot] (see decode_attention)."""

    k_LBGSK: jax.Array
    v_LBGSK: jax.Array
    pos_BS: jax.Array  # position of the token held in each slot
    seg_BS: jax.Array  # segment id per slot; 0 = empty or padding
    index: jax.Array  # number of slots filled (the same for every row)


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> KVCache:
    """An empty cache with room for `max_len` tokens per row."""
    dtype = jnp.dtype(cfg.dtype)
    kv_shape = (cfg.n_layer, batch, cfg.kv_heads, max_len, cfg.head_dim)
    return KVCache(
        k_LBGSK=jnp.zeros(kv_shape, dtype),
        v_LBGSK=jnp.zeros(kv_shape, dtype),
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


def attention_mask(q_pos_BT, k_pos_BS, q_seg_BT, k_seg_BS, cfg: ModelConfig, pattern: str | None = None) -> jax.Array:
    """Boolean [B, T, S]: query t may attend to key s, under `pattern` (None: model.attention)."""
    allowed = pattern_allows(q_pos_BT[:, :, None], k_pos_BS[:, None, :], pattern or cfg.attention, cfg.window,
                             cfg.stride)
    return allowed & (q_seg_BT[:, :, None] == k_seg_BS[:, None, :])


def softcap(logits: jax.Array, cap: float) -> jax.Array:
    """cap·tanh(logits / cap): logits squashed into (-cap, cap) (Gemma 2); no-op for cap 0."""
    return cap * jnp.tanh(logits / cap) if cap else logits


def score_scale(cfg: ModelConfig, head_dim: int) -> float:
    """What q·k of heads `head_dim` wide is multiplied by: model.query_scale_dim^-1/2 (0: head_dim^-1/2), with μP's
    multiplier."""
    return attention_scale(cfg.query_scale_dim or head_dim, cfg)


def _repeat_heads(x_BSGK: jax.Array, n_heads: int) -> jax.Array:
    repeats = n_heads // x_BSGK.shape[2]
    return jnp.repeat(x_BSGK, repeats, axis=2) if repeats > 1 else x_BSGK


def scaled_scores(q_BTNK, k_BSNK, scale: float, cap: float) -> jax.Array:
    """The attention logits q·k [B, N, T, S] (float32) times `scale`, soft-capped at `cap` (0: not), before any
    position bias or mask."""
    return softcap(jnp.einsum("btnk,bsnk->bnts", q_BTNK, k_BSNK, preferred_element_type=jnp.float32) * scale, cap)


def max_abs_logit(q_BTNK, k_BSGK, mask_BTS, scale: float, cap: float) -> jax.Array:
    """The largest |attention logit| (`scaled_scores`) over the (query, key) pairs the mask allows: the logit growth
    that qk-norm and soft-capping guard against (train.stats_every logs it per layer)."""
    logits_BNTS = scaled_scores(q_BTNK, _repeat_heads(k_BSGK, q_BTNK.shape[2]), scale, cap)
    return jnp.max(jnp.where(mask_BTS[:, None], jnp.abs(logits_BNTS), 0.0))


def xla_attention(q_BTNK, k_BSGK, v_BSGK, mask_BTS, bias_BNTS=None, dropout_rng=None, dropout_rate=0.0,
                  scale: float | None = None, cap: float = 0.0):
    """Reference attention in plain jnp: scores q·k times `scale` (None: 1/sqrt(head_dim)), soft-capped at `cap`
    (0: not), float32 softmax, optional additive bias and dropout.

    KV heads are repeated up to the query heads (GQA/MQA) so every contraction is a plain 4-D batched matmul:
    XLA's CPU backend runs the 5-D grouped form ~3x slower, and the repeat's gradient is a cheap sum."""
    n, k = q_BTNK.shape[2], q_BTNK.shape[3]
    k_BSNK, v_BSNK = _repeat_heads(k_BSGK, n), _repeat_heads(v_BSGK, n)
    scale = k ** -0.5 if scale is None else scale
    logits_BNTS = scaled_scores(q_BTNK, k_BSNK, scale, cap)
    if bias_BNTS is not None:
        logits_BNTS = logits_BNTS + bias_BNTS
    logits_BNTS = jnp.where(mask_BTS[:, None], logits_BNTS, jnp.finfo(jnp.float32).min)
    probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1)
    if dropout_rng is not None and dropout_rate > 0.0:
        probs_BNTS = dropout(probs_BNTS, dropout_rate, dropout_rng)
    out_BTNK = jnp.einsum("bnts,bsnk->btnk", probs_BNTS.astype(v_BSNK.dtype), v_BSNK,
                          preferred_element_type=jnp.float32)
    return out_BTNK.astype(q_BTNK.dtype)


def decode_attention(q_B1NK, k_B1GK, v_B1GK, cache_k_BGSK, cache_v_BGSK, index, mask_B1S, bias_BN1S=None,
                     scale: float | None = None, cap: float = 0.0):
    """xla_attention of one new token per row, to be written at slot `index`, over the cache before that write.

    The same numbers as attending over the updated cache, with the new key and value taken apart: reading the
    updated cache makes XLA copy every layer's buffers on each step instead of updating them in place. The cache's
    [B, kv heads, S, K] layout puts the dots' batch dims outermost, so K and V are read without a transposing copy;
    query heads sharing a KV head are the rows of one matmul."""
    b, _, n, k = q_B1NK.shape
    g, s = cache_k_BGSK.shape[1], cache_k_BGSK.shape[2]
    scale = k ** -0.5 if scale is None else scale
    q_BGRK = q_B1NK.reshape(b, g, n // g, k)
    cached_BGRS = jnp.einsum("bgrk,bgsk->bgrs", q_BGRK, cache_k_BGSK.astype(q_BGRK.dtype),
                             preferred_element_type=jnp.float32)
    own_BGR1 = jnp.einsum("bgrk,bgk->bgr", q_BGRK, k_B1GK[:, 0].astype(q_BGRK.dtype),
                          preferred_element_type=jnp.float32)[..., None]
    own_S = jnp.arange(s) == index
    logits_BNS = softcap(jnp.where(own_S, own_BGR1, cached_BGRS).reshape(b, n, s) * scale, cap)
    if bias_BN1S is not None:
        logits_BNS = logits_BNS + bias_BN1S[:, :, 0]
    logits_BNS = jnp.where(mask_B1S, logits_BNS, jnp.finfo(jnp.float32).min)
    probs_BGRS = jax.nn.softmax(logits_BNS, axis=-1).reshape(b, g, n // g, s)
    out_BGRK = jnp.einsum("bgrs,bgsk->bgrk", jnp.where(own_S, 0.0, probs_BGRS).astype(cache_v_BGSK.dtype),
                          cache_v_BGSK, preferred_element_type=jnp.float32)
    own_prob_BGR1 = jnp.sum(jnp.where(own_S, probs_BGRS, 0.0), axis=-1, keepdims=True)
    out_BGRK = out_BGRK + own_prob_BGR1 * v_B1GK[:, 0, :, None, :].astype(jnp.float32)
    return out_BGRK.reshape(b, 1, n, k).astype(q_B1NK.dtype)


# `apply(..., mutable=[INTERMEDIATES])` gets each layer's max |attention logit| under attn/LOGIT_MAX; only the xla
# kernel, which materialises the scores, sows it (the fused kernels and KV-cache decoding do not)
INTERMEDIATES = "intermediates"
LOGIT_MAX = "logit_max"
KERNEL_PLATFORM = {"cudnn": "gpu", "splash": "tpu"}
PREFERRED_KERNEL = {platform: impl for impl, platform in KERNEL_PLATFORM.items()}
SPLASH_BLOCK = 128  # splash's default q/kv block; its blocks must be multiples of the 128 TPU lanes
CUDNN_MAX_HEAD_DIM = 128

log = logging.getLogger(__name__)


def kernel_unsupported_reason(impl: str, cfg: ModelConfig, platform: str, length: int, decoding: bool,
                              dropout: bool, packed: bool) -> str | None:
    """Why `impl` cannot serve this config on `platform` for sequences of `length` (None if it can).

    `packed` means segment ids or custom positions; a kernel given segment ids assumes positions advance by one
    inside each segment, as packed documents (gptjax.data.packing) have them. Only `xla` serves everything."""
    if impl == "xla":
        return None
    if platform != KERNEL_PLATFORM[impl]:
        return f"attention_impl='{impl}' needs a {KERNEL_PLATFORM[impl].upper()}, the target platform is {platform}"
    if decoding:
        return f"attention_impl='{impl}' has no KV-cache decode path"
    if dropout:
        return f"attention_impl='{impl}' does not apply attention dropout"
    if cfg.position == "alibi":
        return f"attention_impl='{impl}' does not take the ALiBi bias"
    if cfg.attn_softcap:
        return f"attention_impl='{impl}' does not soft-cap attention logits (model.attn_softcap)"
    if cfg.layer_pattern:
        return f"attention_impl='{impl}' takes one attention pattern for every layer, not model.layer_pattern"
    if impl == "splash" and length % SPLASH_BLOCK:
        return f"attention_impl='splash' needs a sequence length divisible by {SPLASH_BLOCK}, got {length}"
    if impl == "cudnn" and packed:
        return "attention_impl='cudnn' does not take segment ids or custom positions"
    if impl == "cudnn" and cfg.attention == "strided":
        return "attention_impl='cudnn' supports dense and local patterns, not strided"
    if impl == "cudnn" and cfg.dtype == "float32":
        return "attention_impl='cudnn' needs model.dtype bfloat16 or float16"
    if impl == "cudnn" and (cfg.head_dim % 8 or cfg.head_dim > CUDNN_MAX_HEAD_DIM):
        return f"attention_impl='cudnn' needs a head dim divisible by 8 and at most {CUDNN_MAX_HEAD_DIM}, " \
               f"got {cfg.head_dim}"
    return None


@functools.lru_cache(maxsize=64)
def _log_fallback(preferred: str, reason: str) -> None:
    log.info("attention_impl=auto: using xla attention, not %s: %s", preferred, reason)


def choose_kernel(cfg: ModelConfig, length: int, decoding: bool, dropout: bool, packed: bool) -> str:
    """The kernel to run: the configured one (or a clear error), or under 'auto' the fastest that fits the target
    platform (see `target_platform`), falling back to xla with one info line."""
    platform = target_platform()
    if cfg.attention_impl == "auto":
        preferred = PREFERRED_KERNEL.get(platform, "xla")
        reason = kernel_unsupported_reason(preferred, cfg, platform, length, decoding, dropout, packed)
        if reason is None:
            return preferred
        _log_fallback(preferred, reason)
        return "xla"
    reason = kernel_unsupported_reason(cfg.attention_impl, cfg, platform, length, decoding, dropout, packed)
    if reason:
        raise GptjaxError(f"{reason}; use model.attention_impl=xla or auto")
    return cfg.attention_impl


def shard_batch_and_heads(local_fn, q_BTNK, k_BSGK, v_BSGK, seg_BT=None):
    """Runs `local_fn(q, k, v[, seg])` per device in shard_map over the current mesh: batch over the mesh axes of
    `batch`, heads over those of `act_heads` (the rules table). Pallas and cuDNN calls cannot be partitioned by
    XLA's SPMD pass, so each device runs the kernel on its own shard. Without a mesh, a plain call."""
    mesh = jax.sharding.get_abstract_mesh()
    args = (q_BTNK, k_BSGK, v_BSGK) + (() if seg_BT is None else (seg_BT,))
    if mesh.empty:
        return local_fn(*args)
    q_spec = spec_for(("batch", "act_length", "act_heads", None), q_BTNK.shape, mesh)
    kv_spec = spec_for(("batch", "act_length", "act_kv_heads", None), k_BSGK.shape, mesh)
    if kv_spec[2] != q_spec[2]:  # KV heads too few to split like the query heads: give each shard its own copies
        args = (q_BTNK, _repeat_heads(k_BSGK, q_BTNK.shape[2]), _repeat_heads(v_BSGK, q_BTNK.shape[2])) + args[3:]
        kv_spec = q_spec
    specs = (q_spec, kv_spec, kv_spec) + (() if seg_BT is None else (P(q_spec[0], None),))
    return jax.shard_map(local_fn, mesh=mesh, in_specs=specs, out_specs=q_spec, check_vma=False)(*args)


def _cudnn_local(q_BTNK, k_BSGK, v_BSGK, cfg: ModelConfig, implementation: str | None):
    window = (cfg.window - 1, 0) if cfg.attention == "local" else None
    return jax.nn.dot_product_attention(
        q_BTNK, k_BSGK, v_BSGK, scale=score_scale(cfg, q_BTNK.shape[-1]), is_causal=True,
        local_window_size=window, implementation=implementation)


def cudnn_attention(q_BTNK, k_BSGK, v_BSGK, cfg: ModelConfig, implementation: str | None = "cudnn"):
    """Fused attention through jax.nn.dot_product_attention (cuDNN flash attention on NVIDIA GPUs), per shard."""
    local_fn = functools.partial(_cudnn_local, cfg=cfg, implementation=implementation)
    return shard_batch_and_heads(local_fn, q_BTNK, k_BSGK, v_BSGK)


def _splash_kernel(pattern: str, window: int, stride: int, n_heads: int, seq_len: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    # Built inside each trace, not cached: the kernel holds its mask tables as arrays of the trace that made it.
    shape = (seq_len, seq_len)
    if pattern == "dense":
        head_mask = sm.CausalMask(shape)
    elif pattern == "local":
        head_mask = sm.LocalMask(shape, window_size=(window - 1, 0), offset=0)
    else:
        pos = np.arange(seq_len)
        head_mask = sm.NumpyMask(np.asarray(pattern_allows(pos[:, None], pos[None, :], pattern, window, stride)))
    return sk.make_splash_mha(sm.MultiHeadMask([head_mask] * n_heads), head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def _splash_local(q_BTNK, k_BSGK, v_BSGK, seg_BT=None, *, cfg: ModelConfig, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    kernel = _splash_kernel(cfg.attention, cfg.window, cfg.stride, q_BTNK.shape[2], q_BTNK.shape[1], interpret)
    scaled_q = q_BTNK * score_scale(cfg, q_BTNK.shape[-1])
    q_BNTK, k_BGSK, v_BGSK = (jnp.swapaxes(x, 1, 2) for x in (scaled_q, k_BSGK, v_BSGK))
    if seg_BT is None:
        out_BNTK = jax.vmap(kernel)(q_BNTK, k_BGSK, v_BGSK)
    else:
        out_BNTK = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=SegmentIds(s, s)))(
            q_BNTK, k_BGSK, v_BGSK, seg_BT)
    return jnp.swapaxes(out_BNTK, 1, 2).astype(q_BTNK.dtype)


def splash_attention(q_BTNK, k_BSGK, v_BSGK, cfg: ModelConfig, seg_BT=None, interpret: bool = False):
    """TPU Pallas splash attention per shard; its block-sparse mask follows the same `pattern_allows` rule, and
    segment ids (packed documents) keep documents apart. `interpret` runs the Pallas interpreter (any platform)."""
    local_fn = functools.partial(_splash_local, cfg=cfg, interpret=interpret)
    return shard_batch_and_heads(local_fn, q_BTNK, k_BSGK, v_BSGK, seg_BT)


class AttnContext(NamedTuple):
    """Per-forward inputs every layer's attention shares (computed once, broadcast over layers).

    Under model.layer_pattern, local layers take the `local_*` mask and rope (None otherwise)."""

    mask_BTS: jax.Array
    bias_BNTS: jax.Array | None
    rope_cos_BTH: jax.Array | None
    rope_sin_BTH: jax.Array | None
    cache_index: jax.Array | None
    segment_ids_BT: jax.Array | None = None  # for kernels that take segment ids; None: one segment per row
    local_mask_BTS: jax.Array | None = None
    local_rope_cos_BTH: jax.Array | None = None
    local_rope_sin_BTH: jax.Array | None = None


def pick(local, local_value, global_value):
    """`local_value` for a local layer, else `global_value`; `local` is a Python bool (unrolled layers) or a traced
    bool (scanned layers), None where the model has no layer_pattern."""
    if local is None or local_value is None:
        return global_value
    if isinstance(local, bool):
        return local_value if local else global_value
    return jnp.where(local, local_value, global_value)


def layer_context(ctx: AttnContext, local) -> AttnContext:
    """The context one layer sees: its kind's mask and rope in the global slots."""
    return ctx._replace(mask_BTS=pick(local, ctx.local_mask_BTS, ctx.mask_BTS),
                        rope_cos_BTH=pick(local, ctx.local_rope_cos_BTH, ctx.rope_cos_BTH),
                        rope_sin_BTH=pick(local, ctx.local_rope_sin_BTH, ctx.rope_sin_BTH))


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

        def proj(heads, axes, target, name):
            return Dense((heads, k), ("embed", axes, "head_dim"), use_bias=cfg.use_bias or cfg.qkv_bias,
                         init_std=hidden_init_std(cfg, cfg.init_std), dtype=dtype, lora=lora_spec(cfg, target),
                         deterministic=self.deterministic, name=name)

        def head_norm(name):
            return Norm("rmsnorm", cfg.norm_eps, False, dtype, cfg.norm_offset, name=name)

        q_BTNK = proj(n, "heads", "q", "query")(x_BTD)
        k_BTGK = proj(g, "kv_heads", "k", "key")(x_BTD)
        v_BTGK = proj(g, "kv_heads", "v", "value")(x_BTD)
        if cfg.qk_norm:
            q_BTNK, k_BTGK = head_norm("query_norm")(q_BTNK), head_norm("key_norm")(k_BTGK)
        q_BTNK = constrain(q_BTNK, ("batch", "act_length", "act_heads", None))
        k_BTGK = constrain(k_BTGK, ("batch", "act_length", "act_kv_heads", None))
        v_BTGK = constrain(v_BTGK, ("batch", "act_length", "act_kv_heads", None))
        if ctx.rope_cos_BTH is not None:
            q_BTNK = apply_rope(q_BTNK, ctx.rope_cos_BTH, ctx.rope_sin_BTH)
            k_BTGK = apply_rope(k_BTGK, ctx.rope_cos_BTH, ctx.rope_sin_BTH)

        new_cache = None
        if layer_cache is not None:
            new_cache = tuple(jax.lax.dynamic_update_slice(old_BGSK,
                                                           jnp.swapaxes(new_BTGK, 1, 2).astype(old_BGSK.dtype),
                                                           (0, 0, ctx.cache_index, 0))
                              for old_BGSK, new_BTGK in zip(layer_cache, (k_BTGK, v_BTGK)))
            # several new tokens (prefill): the xla kernel's layout, in float32 (exact for bfloat16 values; XLA CPU
            # has no bfloat16 batched dot for this transposed operand)
            k_BSGK, v_BSGK = (jnp.swapaxes(c_BGSK, 1, 2).astype(jnp.float32) for c_BGSK in new_cache)
        else:
            k_BSGK, v_BSGK = k_BTGK, v_BTGK

        dropout_rng = None
        if not self.deterministic and cfg.dropout > 0.0:
            dropout_rng = self.make_rng("dropout")
        if self.kernel == "cudnn":
            out_BTNK = cudnn_attention(q_BTNK, k_BSGK, v_BSGK, cfg)
        elif self.kernel == "splash":
            out_BTNK = splash_attention(q_BTNK, k_BSGK, v_BSGK, cfg, ctx.segment_ids_BT)
        elif layer_cache is not None and q_BTNK.shape[1] == 1:
            out_BTNK = decode_attention(q_BTNK, k_BTGK, v_BTGK, *layer_cache, ctx.cache_index, ctx.mask_BTS,
                                        ctx.bias_BNTS, score_scale(cfg, k), cfg.attn_softcap)
        else:
            if self.is_mutable_collection(INTERMEDIATES) and not self.is_initializing():  # only when asked
                self.sow(INTERMEDIATES, LOGIT_MAX,
                         max_abs_logit(q_BTNK, k_BSGK, ctx.mask_BTS, score_scale(cfg, k), cfg.attn_softcap))
            out_BTNK = xla_attention(q_BTNK, k_BSGK, v_BSGK, ctx.mask_BTS, ctx.bias_BNTS, dropout_rng, cfg.dropout,
                                     score_scale(cfg, k), cfg.attn_softcap)
        out_BTNK = checkpoint_name(constrain(out_BTNK, ("batch", "act_length", "act_heads", None)), "attn_out")
        out_BTD = Dense((cfg.d_model,), ("heads", "head_dim", "embed"), n_in=2, use_bias=cfg.use_bias,
                        init_std=self.out_std, dtype=dtype, lora=lora_spec(cfg, "o"), deterministic=self.deterministic,
                        name="out")(out_BTNK)
        return out_BTD, new_cache
