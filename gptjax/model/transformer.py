"""The decoder-only Transformer: one module, every variant a ModelConfig setting."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.config import ModelConfig
from gptjax.model.attention import (
    INTERMEDIATES,
    Attention,
    AttnContext,
    KVCache,
    attention_mask,
    choose_kernel,
    layer_context,
    softcap,
)
from gptjax.model.layers import (
    Dropout,
    Mlp,
    Norm,
    alibi_bias,
    matmul_2d,
    normal_init,
    rope_angles,
    rope_frequencies,
    sinusoidal_table,
)
from gptjax.model.lora import lora_spec
from gptjax.model.moe import MOE_COLLECTION, MoeMlp, active_mlp_params
from gptjax.model.mup import hidden_init_std, output_multiplier
from gptjax.parallel.rules import constrain

PADDED_LOGIT = -1e9  # logits of padded vocabulary entries: never sampled, ~0 probability, finite (no NaN in sums)

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attn_out": jax.checkpoint_policies.save_only_these_names("attn_out"),
}


class Block(nn.Module):
    """One Transformer layer: attention and MLP sub-blocks with residuals, norms before (pre) or after (post), and
    under model.sandwich_norm also on each sub-block's output before its residual add.

    `layer_index` is the layer's place in an unrolled stack. `local` says whether it is a local layer of
    model.layer_pattern: a Python bool when unrolled, a traced one when scanned, None without a pattern."""

    cfg: ModelConfig
    kernel: str = "xla"
    deterministic: bool = True
    layer_index: int = 0

    @nn.compact
    def __call__(self, x_BTD, layer_cache, ctx: AttnContext, local=None):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        in_std = hidden_init_std(cfg, cfg.init_std)
        out_std = in_std / math.sqrt(2 * cfg.n_layer)
        ctx = layer_context(ctx, local)
        attn = Attention(cfg, out_std, self.kernel, self.deterministic, name="attn")
        if cfg.is_moe_layer(self.layer_index):
            mlp = MoeMlp(cfg, in_std, out_std, self.deterministic, name="moe")
        else:
            mlp = Mlp(cfg.mlp, cfg.gelu_approximate, cfg.d_model, cfg.ff_dim, cfg.use_bias, in_std, out_std, dtype,
                      lora_spec(cfg, "mlp"), self.deterministic, name="mlp")

        def norm(name):
            return Norm(cfg.norm, cfg.norm_eps, cfg.use_bias, dtype, cfg.norm_offset, name=name)

        norm1, norm2 = norm("norm1"), norm("norm2")
        drop = Dropout(cfg.dropout, deterministic=self.deterministic)
        if cfg.norm_placement == "pre":
            h_BTD, new_cache = attn(norm1(x_BTD), ctx, layer_cache)
            if cfg.sandwich_norm:
                h_BTD = norm("post_attn_norm")(h_BTD)
            x_BTD = x_BTD + drop(h_BTD)
            h_BTD = mlp(norm2(x_BTD))
            if cfg.sandwich_norm:
                h_BTD = norm("post_mlp_norm")(h_BTD)
            x_BTD = x_BTD + drop(h_BTD)
        else:
            h_BTD, new_cache = attn(x_BTD, ctx, layer_cache)
            x_BTD = norm1(x_BTD + drop(h_BTD))
            x_BTD = norm2(x_BTD + drop(mlp(x_BTD)))
        return constrain(x_BTD, ("batch", "act_length", "act_embed")), new_cache


def _block_class(cfg: ModelConfig):
    if cfg.remat == "none":
        return Block
    return nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)


def head_logits(x_BTD, head_DV, cfg: ModelConfig) -> jax.Array:
    """Final-normed hidden states [..., D] -> logits [..., padded_vocab] (float32), padded entries at PADDED_LOGIT.

    Under model.parametrization=mup the logits carry μP's readout multiplier 1/m (gptjax.model.mup); under
    model.logit_softcap they are soft-capped."""
    logits_BTV = softcap(matmul_2d(x_BTD, head_DV, 1, jnp.dtype(cfg.dtype)) * output_multiplier(cfg),
                         cfg.logit_softcap)
    if cfg.padded_vocab != cfg.vocab_size:
        logits_BTV = jnp.where(jnp.arange(cfg.padded_vocab) < cfg.vocab_size, logits_BTV, PADDED_LOGIT)
    return logits_BTV


def classifier_logits(params, hidden_BD: jax.Array) -> jax.Array:
    """Class logits [B, C] (float32) from hidden states [B, D] through the classifier head (model.num_classes)."""
    return (jnp.dot(hidden_BD.astype(jnp.float32), params["classifier_kernel"])
            + params["classifier_bias"]).astype(jnp.float32)


def last_real_hidden(hidden_BTD: jax.Array, lengths_B: jax.Array) -> jax.Array:
    """The hidden state [B, D] of each row's last real token (row b has lengths_B[b] real tokens, then padding)."""
    return jnp.take_along_axis(hidden_BTD, (lengths_B - 1)[:, None, None].astype(jnp.int32), axis=1)[:, 0]


def head_matrix(params, cfg: ModelConfig) -> jax.Array:
    """The output projection [D, padded_vocab] in a Transformer's params (the tied embedding or lm_head)."""
    return params["embedding"].T if cfg.tie_embeddings else params["lm_head"]


class Transformer(nn.Module):
    """tokens [B, T] -> logits [B, T, padded_vocab] (float32). With a KVCache: (logits, updated cache).

    return_hidden=True returns the final-normed hidden states [B, T, D] instead of logits (dtype cfg.dtype), so a
    caller can pick positions first (scoring, classification) and apply `head_logits(x, head_matrix(params, cfg))`
    or `classifier_logits(params, x)` (model.num_classes > 0) to just those."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None, cache: KVCache | None = None,
                 deterministic: bool = True, return_hidden: bool = False):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        batch, length = tokens_BT.shape
        custom_layout = positions_BT is not None or segment_ids_BT is not None
        start = cache.index if cache is not None else 0
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((batch, length), jnp.int32)

        embedding_VD = self.param("embedding",
                                  nn.with_logical_partitioning(normal_init(cfg.init_std), ("vocab", "embed")),
                                  (cfg.padded_vocab, cfg.d_model), jnp.float32)
        x_BTD = jnp.take(embedding_VD, tokens_BT, axis=0).astype(dtype)
        if cfg.embed_scale:
            x_BTD = x_BTD * jnp.asarray(math.sqrt(cfg.d_model), dtype)
        if cfg.position == "learned":
            table_PD = self.param("pos_embedding",
                                  nn.with_logical_partitioning(normal_init(cfg.init_std), ("positions", "embed")),
                                  (cfg.position_limit, cfg.d_model), jnp.float32)
            x_BTD = x_BTD + jnp.take(table_PD, positions_BT, axis=0).astype(dtype)
        elif cfg.position == "sinusoidal":
            table_PD = jnp.asarray(sinusoidal_table(cfg.position_limit, cfg.d_model))
            x_BTD = x_BTD + jnp.take(table_PD, positions_BT, axis=0).astype(dtype)
        x_BTD = Dropout(cfg.dropout, deterministic=deterministic)(x_BTD)
        x_BTD = constrain(x_BTD, ("batch", "act_length", "act_embed"))

        if cache is not None:
            key_pos_BS = jax.lax.dynamic_update_slice(cache.pos_BS, positions_BT.astype(jnp.int32), (0, cache.index))
            key_seg_BS = jax.lax.dynamic_update_slice(cache.seg_BS, segment_ids_BT.astype(jnp.int32), (0, cache.index))
        else:
            key_pos_BS, key_seg_BS = positions_BT, segment_ids_BT
        rope = local_rope = (None, None)
        if cfg.position == "rope":
            rope = rope_angles(positions_BT, *rope_frequencies(cfg))
            if cfg.layer_pattern:
                local_rope = rope_angles(positions_BT, *rope_frequencies(cfg, local=True))
        masks = {pattern: attention_mask(positions_BT, key_pos_BS, segment_ids_BT, key_seg_BS, cfg, pattern)
                 for pattern in (("dense", "local") if cfg.layer_pattern else (cfg.attention,))}
        ctx = AttnContext(
            mask_BTS=masks.get("dense", masks.get(cfg.attention)),
            bias_BNTS=alibi_bias(positions_BT, key_pos_BS, cfg.n_head) if cfg.position == "alibi" else None,
            rope_cos_BTH=rope[0],
            rope_sin_BTH=rope[1],
            cache_index=cache.index if cache is not None else None,
            segment_ids_BT=segment_ids_BT if custom_layout else None,
            local_mask_BTS=masks["local"] if cfg.layer_pattern else None,
            local_rope_cos_BTH=local_rope[0],
            local_rope_sin_BTH=local_rope[1],
        )
        kernel = choose_kernel(cfg, length, decoding=cache is not None,
                               dropout=not deterministic and cfg.dropout > 0, packed=custom_layout)
        kv_LBGSK = (cache.k_LBGSK, cache.v_LBGSK) if cache is not None else None
        block_cls = _block_class(cfg)
        if cfg.scan_layers:
            stack = nn.scan(block_cls, variable_axes={"params": 0, MOE_COLLECTION: 0, INTERMEDIATES: 0},
                            split_rngs={"params": True, "dropout": True},
                            in_axes=(0, nn.broadcast, 0), length=cfg.n_layer,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            local_L = jnp.asarray([cfg.layer_kind(i) == "local" for i in range(cfg.n_layer)]) \
                if cfg.layer_pattern else None
            x_BTD, new_kv = stack(cfg, kernel, deterministic, name="layers")(x_BTD, kv_LBGSK, ctx, local_L)
        else:
            new_k, new_v = [], []
            for i in range(cfg.n_layer):
                layer_cache = (kv_LBGSK[0][i], kv_LBGSK[1][i]) if cache is not None else None
                local = cfg.layer_kind(i) == "local" if cfg.layer_pattern else None
                x_BTD, layer_new = block_cls(cfg, kernel, deterministic, layer_index=i, name=f"layer_{i}")(
                    x_BTD, layer_cache, ctx, local)
                if cache is not None:
                    new_k.append(layer_new[0])
                    new_v.append(layer_new[1])
            if cache is None:
                new_kv = None
            elif isinstance(cache.k_LBGSK, tuple):  # per-layer buffers stay apart (see KVCache)
                new_kv = (tuple(new_k), tuple(new_v))
            else:
                new_kv = (jnp.stack(new_k), jnp.stack(new_v))

        if cfg.norm_placement == "pre":
            x_BTD = Norm(cfg.norm, cfg.norm_eps, cfg.use_bias, dtype, cfg.norm_offset, name="norm_f")(x_BTD)
        if cfg.num_classes:
            self.param("classifier_kernel",
                       nn.with_logical_partitioning(normal_init(cfg.init_std), ("embed", "classes")),
                       (cfg.d_model, cfg.num_classes), jnp.float32)
            self.param("classifier_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("classes",)),
                       (cfg.num_classes,), jnp.float32)
        if cfg.tie_embeddings:
            head_DV = embedding_VD.T
        else:
            head_DV = self.param("lm_head", nn.with_logical_partitioning(normal_init(cfg.init_std), ("embed", "vocab")),
                                 (cfg.d_model, cfg.padded_vocab), jnp.float32)
        out_BT_ = x_BTD if return_hidden else constrain(head_logits(x_BTD, head_DV, cfg),
                                                          ("batch", "act_length", "act_vocab"))
        if cache is None:
            return out_BT_
        new_cache = KVCache(new_kv[0], new_kv[1], key_pos_BS, key_seg_BS, cache.index + length)
        return out_BT_, new_cache


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6·(matmul params) + 12·(query width)·(keys attended, summed
    over layers)."""
    d, k = cfg.d_model, cfg.head_dim
    attn_params = d * cfg.n_head * k * 2 + d * cfg.kv_heads * k * 2
    mlp_params = sum(active_mlp_params(cfg, i) for i in range(cfg.n_layer))  # MoE: the active experts only
    matmul_params = cfg.n_layer * attn_params + mlp_params + d * cfg.padded_vocab
    attended = sum(attended_context(cfg, cfg.layer_kind(i), seq_len) for i in range(cfg.n_layer))
    return 6.0 * matmul_params + 12.0 * cfg.n_head * k * attended


def attended_context(cfg: ModelConfig, kind: str, seq_len: int) -> int:
    """Keys a query attends to (at most) in a layer of `kind` ('local' or 'global') for sequences of `seq_len`."""
    if kind == "local":
        return min(seq_len, cfg.window)
    if cfg.attention == "strided":
        return min(seq_len, cfg.stride + seq_len // cfg.stride)
    return seq_len


def init_params(model: Transformer, seed: int, seq_len: int):
    """Boxed (logically partitioned) params for a [1, seq_len] input."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    return model.init(jax.random.PRNGKey(seed), tokens)["params"]


def abstract_params(model_cfg: ModelConfig, seed: int = 0) -> Any:
    """The boxed (logically partitioned) ShapeDtypeStructs of a model's params, without computing anything."""
    return jax.eval_shape(lambda: init_params(Transformer(model_cfg), seed, min(model_cfg.block_size, 8)))
