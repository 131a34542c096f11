"""Parameter and training-FLOP counts of a ModelConfig, computed from the config alone (no model is built).

`total` is every trained parameter (what Chinchilla calls N); `non_embedding` leaves out the token embedding, the
learned position table and an untied output head (Kaplan et al.'s N)."""
from __future__ import annotations

from typing import NamedTuple

from gptjax.config import ModelConfig
from gptjax.errors import GptjaxError
from gptjax.model.transformer import flops_per_token

PARAM_KINDS = ("total", "non_embedding")


class ParamCounts(NamedTuple):
    """A model's parameters by where they sit."""

    embedding: int  # token embedding (the padded vocabulary), learned position table, untied lm_head
    blocks: int  # all Transformer layers
    final_norm: int

    @property
    def total(self) -> int:
        return self.embedding + self.blocks + self.final_norm

    @property
    def non_embedding(self) -> int:
        return self.blocks + self.final_norm

    def of_kind(self, kind: str) -> int:
        """The count `kind` (one of PARAM_KINDS) names."""
        if kind not in PARAM_KINDS:
            raise GptjaxError(f"unknown parameter count '{kind}'; use one of {', '.join(PARAM_KINDS)}")
        return getattr(self, kind)


def norm_params(cfg: ModelConfig) -> int:
    """One Norm layer: a scale, plus a bias for a LayerNorm with use_bias (RMSNorm has none)."""
    has_bias = cfg.norm == "layernorm" and cfg.use_bias
    return cfg.d_model * (2 if has_bias else 1)


def attention_params(cfg: ModelConfig) -> int:
    """Q, K, V and output projections (K and V over the kv heads), with their biases when use_bias."""
    d, k = cfg.d_model, cfg.head_dim
    q_out, kv_out = cfg.n_head * k, cfg.kv_heads * k
    weights = d * q_out + 2 * d * kv_out + q_out * d
    biases = q_out + 2 * kv_out + d if cfg.use_bias else 0
    return weights + biases


def _one_mlp(cfg: ModelConfig, width: int) -> int:
    """GELU: fc + proj; SwiGLU/GeGLU: gate + up + proj; with their biases when use_bias."""
    d = cfg.d_model
    inputs = 2 if cfg.mlp in ("swiglu", "geglu") else 1
    weights = inputs * d * width + width * d
    biases = inputs * width + d if cfg.use_bias else 0
    return weights + biases


def mlp_params(cfg: ModelConfig, index: int = 0) -> int:
    """Layer `index`'s MLP: the dense one, or (model.is_moe_layer) every routed expert, the shared experts (one MLP
    of their summed width) and the router."""
    if not cfg.is_moe_layer(index):
        return _one_mlp(cfg, cfg.ff_dim)
    shared = _one_mlp(cfg, cfg.moe_shared_experts * cfg.moe_ff_dim) if cfg.moe_shared_experts else 0
    return cfg.moe_experts * _one_mlp(cfg, cfg.moe_ff_dim) + shared + cfg.d_model * cfg.moe_experts


def embedding_params(cfg: ModelConfig) -> int:
    """Token embedding over the padded vocabulary, the learned position table, and lm_head when untied."""
    token = cfg.padded_vocab * cfg.d_model
    positions = cfg.position_limit * cfg.d_model if cfg.position == "learned" else 0
    head = 0 if cfg.tie_embeddings else cfg.d_model * cfg.padded_vocab
    return token + positions + head


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """The parameters the Transformer of `cfg` creates, counted analytically (the language model only)."""
    if cfg.vocab_size <= 0:
        raise GptjaxError("model.vocab_size is 0 (taken from the tokenizer when the data is prepared), so the "
                          "embedding cannot be counted; set --config.model.vocab_size=N or use a run's config.json")
    if cfg.lora_rank or cfg.num_classes:
        raise GptjaxError("scaling counts cover the language model only; set model.lora_rank=0 and "
                          "model.num_classes=0 (adapters and classifier heads are not part of a scaling law)")
    layer = 2 * norm_params(cfg) + attention_params(cfg)
    blocks = cfg.n_layer * layer + sum(mlp_params(cfg, i) for i in range(cfg.n_layer))
    final_norm = norm_params(cfg) if cfg.norm_placement == "pre" else 0
    return ParamCounts(embedding=embedding_params(cfg), blocks=blocks, final_norm=final_norm)


def training_flops_per_token(cfg: ModelConfig, seq_len: int = 0) -> float:
    """Training FLOPs (forward + backward) per token at `seq_len` (0 = block_size): the trainer's MFU count."""
    return flops_per_token(cfg, seq_len or cfg.block_size)


def training_flops(n_params: float, n_tokens: float) -> float:
    """The C = 6·N·D approximation of a run's training compute (Kaplan et al. 2020; Hoffmann et al. 2022)."""
    return 6.0 * n_params * n_tokens
