"""gptjax <-> Hugging Face transformers for GPT-2 and the Llama lineage: pure functions over param trees + file I/O.

Export writes a `save_pretrained`-style directory (config.json, model.safetensors, generation_config.json and
tokenizer files) that `AutoModelForCausalLM.from_pretrained` loads with no missing or unexpected weights. Import
reads such a directory (safetensors only, single file or sharded) into a gptjax Config, params and tokenizer.
Neither direction needs torch or transformers.

Which gptjax configs have an HF twin (one mapping per family, read from the HF config, never from fixtures):
  * GPT2LMHeadModel: layernorm, pre-norm, learned positions, gelu (tanh or exact), MHA, dense attention; tied or untied.
    HF GPT-2 always has biases: a `use_bias=False` model is written with zero biases (identical outputs).
  * The rope families share one tensor layout (`rope_layer_slots`) and differ in switches (`FAMILIES`):
    LlamaForCausalLM (Llama 2/3.x: swiglu, GQA, `use_bias` = attention_bias + mlp_bias, any rope scaling);
    MistralForCausalLM (every layer sliding-window: attention='local');
    Qwen2ForCausalLM (q/k/v biases: qkv_bias; per-layer sliding windows: layer_pattern, a pattern-only model is
    written with zero q/k/v biases); Qwen3ForCausalLM (qk_norm, decoupled head_dim);
    Gemma2ForCausalLM (norm_offset, embed_scale, sandwich_norm, geglu, query_scale_dim, attn/logit softcaps, "LG"
    layers) and Gemma3ForCausalLM (Gemma 2 plus qk_norm, and a separate rope theta for local layers).
    The family of an export is the one the switches name (`hf_family`); rope scaling (linear, llama3, yarn) is
    written in `rope_parameters`.
Anything else (alibi, sinusoidal or no positions, strided attention, post-norm, mixes such as rmsnorm with
learned positions) is refused with an error naming the switch; `gptjax export --format safetensors` keeps it all.

Vocabulary: HF files hold the real `vocab_size` rows; gptjax pads to `padded_vocab` on import with zero rows
(padded ids are never fed and their logits are masked, so the zeros are never used).

Tokenizers:
  * gpt2_bpe <-> vocab.json + merges.txt (GPT2Tokenizer, bos = eos = unk = `<|endoftext|>`).
  * sentencepiece <-> tokenizer.model (LlamaTokenizer, eos `<|endoftext|>`, no BOS added). gptjax marks
    document ends with the piece `<|endoftext|>`; a Llama-style model without that piece has its EOS control
    piece (e.g. `</s>`) renamed `<|endoftext|>` on import, so gptjax's end-of-text id is HF's eos id and every
    id and encoding is unchanged.
  * char: HF has no character tokenizer class, so it is written as a `tokenizers` tokenizer.json (a WordLevel
    vocabulary of the characters, split per character, fused on decode) loadable with AutoTokenizer; that exact
    shape is recognised on import and becomes a char tokenizer again.
  * hf <-> any other tokenizer.json (Llama 3, Mistral, Qwen, Gemma, ...), written verbatim with a tokenizer_config.json
    (PreTrainedTokenizerFast, the family's eos/bos tokens and chat template); end-of-text is the family's EOS.
  * none: a weights-only directory (config.json + safetensors, no tokenizer files) imports as a model without a
    tokenizer (token ids only), or paired with `--tokenizer-dir DIR` (any of the above, or a gptjax tokenizer
    directory); such a model exports as weights + config.json only. Tokenizer files gptjax cannot read are an
    error, never silently dropped.

Imports trust nothing: every tensor read must be a finite float (F16/BF16/F32/F64), named and shaped as
config.json implies, and the tokenizer's vocabulary must fit config.json's vocab_size.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from gptjax import config as config_lib
from gptjax import export, fileio
from gptjax.config import Config, DataConfig, ModelConfig
from gptjax.data import tiktoken_bpe
from gptjax.data import tokenizer as tokenizers
from gptjax.data.tokenizer import EOT
from gptjax.errors import GptjaxError
from gptjax.train import run as run_lib

GPT2 = "gpt2"
LLAMA = "llama"
GPT2_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
GPT2_EXACT_GELU = "gelu"
BLOCK_SIZE_CAP = 2048
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_WEIGHTS_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")
READABLE_TOKENIZERS = ("vocab.json + merges.txt (GPT-2 BPE), tokenizer.model (sentencepiece, or tiktoken ranks as "
                       "Llama 3 ships them), a Hugging Face tokenizer.json (hf; gptjax's char export reads back as "
                       "char), or a gptjax tokenizer directory")
IGNORED_TENSOR_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
QKV = ("query", "key", "value")


# ---------------------------------------------------------------- families


@dataclasses.dataclass(frozen=True)
class Family:
    """How one HF decoder family of the Llama lineage stores what gptjax's switches compute.

    `implies`: the ModelConfig switches every model of the family has. `bias`: which projections config.json can
    give biases ("llama": attention_bias on q/k/v/o and mlp_bias on the MLP; "qkv": q/k/v always; "attention":
    attention_bias on q/k/v/o; "none"). `layer_types`: config.json lists each layer's attention kind (else one
    `sliding_window` for every layer, as Mistral). `gemma`: the Gemma keys (softcaps, query_pre_attn_scalar)."""

    model_type: str
    architecture: str
    implies: Mapping[str, Any]
    bias: str
    layer_types: bool
    activation_key: str = "hidden_act"
    pre_mlp_norm: str = "post_attention_layernorm"
    gemma: bool = False
    rope_per_kind: bool = False  # rope_parameters holds one entry per layer kind (Gemma 3)
    moe: str = ""  # the mixture-of-experts layout: "mixtral" (block_sparse_moe, w1/w3/w2) or "qwen" (mlp.experts)


GEMMA_SWITCHES = {"norm_offset": True, "embed_scale": True, "sandwich_norm": True, "mlp": "geglu"}
MIXTRAL_SWITCHES = {"mlp": "swiglu", "moe_router": "softmax_topk", "moe_renormalize": True, "moe_shared_experts": 0,
                    "moe_first_dense": 0, "moe_every": 1}
MOE_EXPERT_NAMES = {"mixtral": ("block_sparse_moe", {"gate": "w1", "up": "w3", "proj": "w2"}),
                    "qwen": ("mlp", {"gate": "gate_proj", "up": "up_proj", "proj": "down_proj"})}
FAMILIES = {family.model_type: family for family in (
    Family(LLAMA, "LlamaForCausalLM", {"mlp": "swiglu"}, "llama", False),
    Family("mistral", "MistralForCausalLM", {"mlp": "swiglu"}, "none", False),
    Family("qwen2", "Qwen2ForCausalLM", {"mlp": "swiglu"}, "qkv", True),
    Family("qwen3", "Qwen3ForCausalLM", {"mlp": "swiglu", "qk_norm": True}, "attention", True),
    Family("gemma2", "Gemma2ForCausalLM", GEMMA_SWITCHES, "attention", True, "hidden_activation",
           "pre_feedforward_layernorm", gemma=True),
    Family("gemma3_text", "Gemma3ForCausalLM", {**GEMMA_SWITCHES, "qk_norm": True}, "attention", True,
           "hidden_activation", "pre_feedforward_layernorm", gemma=True, rope_per_kind=True),
    Family("mixtral", "MixtralForCausalLM", MIXTRAL_SWITCHES, "none", False, moe="mixtral"),
    Family("qwen3_moe", "Qwen3MoeForCausalLM", {"mlp": "swiglu", "qk_norm": True, "moe_router": "softmax_topk",
                                                "moe_shared_experts": 0}, "attention", True, moe="qwen"),
)}
ARCHITECTURES = {GPT2: "GPT2LMHeadModel"} | {name: family.architecture for name, family in FAMILIES.items()}
BASE_MODEL_PREFIXES = {GPT2: "transformer."} | {name: "model." for name in FAMILIES}
GEMMA_ONLY = ("attn_softcap", "logit_softcap", "query_scale_dim")
ROPE_FAMILY_BASE = {"norm": "rmsnorm", "norm_placement": "pre", "parametrization": "sp"}
SLIDING, FULL = "sliding_attention", "full_attention"
HF_ROPE_TYPES = {"default": "none", "linear": "linear", "llama3": "llama3", "yarn": "yarn"}


# ---------------------------------------------------------------- gptjax config -> HF config


def _refuse(m: ModelConfig, field: str, why: str) -> GptjaxError:
    return GptjaxError(f"model.{field}={getattr(m, field)!r} cannot be exported to Hugging Face: {why}; use "
                       f"--format safetensors")


def _rope_family(m: ModelConfig) -> str:
    """The HF family whose switches are `m`'s (a rope model): Qwen3-MoE or Mixtral for experts (with and without
    QK-norm), Gemma 2/3 for Gemma's details, Qwen3 for QK-norm, Qwen2 for q/k/v-only biases or a local/global layer
    pattern, Mistral for all-local attention, else Llama."""
    if m.moe_experts:
        return "qwen3_moe" if m.qk_norm else "mixtral"
    if m.norm_offset or m.embed_scale or m.sandwich_norm or m.mlp == "geglu":
        return "gemma3_text" if m.qk_norm else "gemma2"
    if m.qk_norm:
        return "qwen3"
    if m.qkv_bias or m.layer_pattern:
        return "qwen2"
    if m.attention == "local":
        return "mistral"
    return LLAMA


def hf_family(m: ModelConfig) -> str:
    """The HF model_type whose architecture computes exactly what `m` computes; else a GptjaxError naming the first
    switch HF cannot represent."""
    if m.position == "learned":
        for field, wanted in {**ROPE_FAMILY_BASE, "norm": "layernorm", "mlp": "gelu", "attention": "dense"}.items():
            if getattr(m, field) != wanted:
                raise _refuse(m, field, f"with position='learned' the model is a GPT2LMHeadModel, which needs "
                                        f"model.{field}='{wanted}'")
        if m.kv_heads != m.n_head:
            raise GptjaxError(f"model.n_kv_head={m.n_kv_head} cannot be exported to Hugging Face: GPT2LMHeadModel "
                              f"has no grouped-query attention (use position='rope' for a Llama model, or --format "
                              f"safetensors)")
        for field in ("qk_norm", "qkv_bias", "norm_offset", "embed_scale", "sandwich_norm", "layer_pattern",
                      "d_head", *GEMMA_ONLY):
            if getattr(m, field):
                raise _refuse(m, field, "GPT2LMHeadModel has no such switch")
        return GPT2
    if m.position != "rope":
        raise GptjaxError(f"model.position='{m.position}' has no Hugging Face equivalent: --format hf exports GPT-2 "
                          f"(position='learned') and Llama-lineage (position='rope') models; use --format safetensors")
    name = _rope_family(m)
    family = FAMILIES[name]
    for field, wanted in {**ROPE_FAMILY_BASE, **family.implies}.items():
        if getattr(m, field) != wanted:
            raise _refuse(m, field, f"its other switches make it a {family.architecture}, which needs "
                                    f"model.{field}={wanted!r}")
    if m.attention == "strided":
        raise _refuse(m, "attention", "no Hugging Face family has strided attention")
    if not family.gemma:
        for field in GEMMA_ONLY:
            if getattr(m, field):
                raise _refuse(m, field, "only the Gemma families have it (they also need norm_offset, embed_scale, "
                                        "sandwich_norm and mlp='geglu')")
    if m.use_bias and family.bias != "llama":
        raise _refuse(m, "use_bias", f"a {family.architecture} has no biases on every projection (Llama has)")
    if m.qkv_bias and family.bias != "qkv":
        raise _refuse(m, "qkv_bias", f"a {family.architecture} has no q/k/v-only biases (Qwen2 has)")
    if m.moe_experts and not family.moe:
        raise _refuse(m, "moe_experts", f"a {family.architecture} has no experts")
    if m.layer_pattern and m.rope_scaling != "none" and not family.rope_per_kind:
        raise _refuse(m, "rope_scaling", f"a {family.architecture} scales the rope of its local layers too")
    if m.layer_pattern and not family.rope_per_kind and m.rope_local_theta not in (0.0, m.rope_theta):
        raise _refuse(m, "rope_local_theta", f"a {family.architecture} has one rope theta for every layer")
    return name


def layer_kinds(m: ModelConfig) -> list[str]:
    """config.json's `layer_types` of `m`: sliding_attention or full_attention per layer."""
    return [SLIDING if m.layer_kind(i) == "local" else FULL for i in range(m.n_layer)]


def hf_rope(m: ModelConfig, local: bool = False) -> dict:
    """A `rope_parameters` entry: the global layers' theta and scaling, or (local) the local layers' theta."""
    if local:
        return {"rope_type": "default", "rope_theta": m.rope_local_theta or m.rope_theta}
    rope = {"rope_type": "default" if m.rope_scaling == "none" else m.rope_scaling, "rope_theta": m.rope_theta}
    if m.rope_scaling != "none":
        rope["factor"] = m.rope_factor
    if m.rope_scaling == "llama3":
        rope.update(low_freq_factor=m.rope_low_freq_factor, high_freq_factor=m.rope_high_freq_factor,
                    original_max_position_embeddings=m.rope_original_positions)
    if m.rope_scaling == "yarn":
        rope.update(beta_fast=m.rope_beta_fast, beta_slow=m.rope_beta_slow,
                    original_max_position_embeddings=m.rope_original_positions)
        if m.rope_attention_factor:
            rope["attention_factor"] = m.rope_attention_factor
    return rope


def _rope_family_config(m: ModelConfig, family: Family) -> dict:
    activation = "silu" if m.mlp == "swiglu" else ("gelu_pytorch_tanh" if m.gelu_approximate else "gelu")
    fields = {"hidden_size": m.d_model, "intermediate_size": m.ff_dim, "num_hidden_layers": m.n_layer,
              "num_attention_heads": m.n_head, "num_key_value_heads": m.kv_heads, "head_dim": m.head_dim,
              family.activation_key: activation, "max_position_embeddings": m.block_size, "rms_norm_eps": m.norm_eps,
              "rope_theta": m.rope_theta, "attention_dropout": 0.0}
    if family.rope_per_kind:
        fields["rope_parameters"] = {FULL: hf_rope(m), SLIDING: hf_rope(m, local=True)}
    else:
        fields["rope_parameters"] = hf_rope(m)
    if family.bias == "llama":
        fields.update(attention_bias=m.use_bias, mlp_bias=m.use_bias, pretraining_tp=1)
    elif family.bias == "attention":
        fields["attention_bias"] = False
    window = m.window if m.attention == "local" or m.layer_pattern else None
    if family.layer_types:
        fields.update(layer_types=layer_kinds(m), sliding_window=window, use_sliding_window=window is not None,
                      max_window_layers=0)
    else:
        fields["sliding_window"] = window
    if family.moe:
        fields.update(_moe_config(m, family))
    if family.gemma:
        fields.update(query_pre_attn_scalar=m.query_scale_dim or m.head_dim,
                      attn_logit_softcapping=m.attn_softcap or None, final_logit_softcapping=m.logit_softcap or None,
                      use_bidirectional_attention=False)
    return fields


def _moe_config(m: ModelConfig, family: Family) -> dict:
    """The expert keys of a Mixtral / Qwen3-MoE config.json."""
    common = {"num_experts_per_tok": m.moe_top_k, "router_aux_loss_coef": m.moe_aux_loss_weight / m.moe_top_k,
              "output_router_logits": False}
    if family.moe == "mixtral":
        return {**common, "num_local_experts": m.moe_experts, "intermediate_size": m.moe_ff_dim,
                "router_jitter_noise": 0.0}
    return {**common, "num_experts": m.moe_experts, "moe_intermediate_size": m.moe_ff_dim,
            "norm_topk_prob": m.moe_renormalize, "decoder_sparse_step": m.moe_every,
            "mlp_only_layers": list(range(m.moe_first_dense))}


def hf_config(m: ModelConfig, eot_id: int | None, dtype: str, bos_id: int | None = None) -> dict:
    """The config.json of the HF twin of `m` (see `hf_family`); bos/eos ids are None for a model without tokenizer,
    and the BOS is the end-of-text token unless the tokenizer has its own (`bos_id`)."""
    name = hf_family(m)
    common = {"architectures": [ARCHITECTURES[name]], "model_type": name, "vocab_size": m.vocab_size,
              "tie_word_embeddings": m.tie_embeddings, "bos_token_id": eot_id if bos_id is None else bos_id,
              "eos_token_id": eot_id,
              "initializer_range": m.init_std, "use_cache": True, "dtype": dtype, "torch_dtype": dtype}
    if name == GPT2:
        return {**common, "n_positions": m.position_limit, "n_embd": m.d_model, "n_layer": m.n_layer,
                "n_head": m.n_head, "n_inner": m.ff_dim,
                "activation_function": GPT2_TANH_GELUS[0] if m.gelu_approximate else GPT2_EXACT_GELU,
                "layer_norm_epsilon": m.norm_eps, "resid_pdrop": m.dropout, "embd_pdrop": m.dropout,
                "attn_pdrop": m.dropout, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "add_cross_attention": False}
    return {**common, **_rope_family_config(m, FAMILIES[name])}


def generation_config(eot_id: int, bos_id: int | None = None) -> dict:
    """generation_config.json: generation stops at the end-of-text token, as gptjax's does."""
    return {"_from_model_config": True, "bos_token_id": eot_id if bos_id is None else bos_id, "eos_token_id": eot_id}


class Slot(NamedTuple):
    """Where one HF tensor lives in gptjax params: its path, its gptjax shape, and for a torch Linear weight
    ([out, in]) how many leading gptjax dims are inputs (None: a vector stored flat, e.g. a norm gain or a bias).
    `expert`: the tensor is that expert's slice [expert] of a stacked [E, ...] MoE kernel."""

    path: tuple[str, ...]
    shape: tuple[int, ...]
    n_in: int | None = None
    expert: int | None = None


def moe_slots(m: ModelConfig, family: Family) -> dict[str, Slot]:
    """The router and every expert's three matrices of a MoE layer, in the family's (saved) names."""
    d, f = m.d_model, m.moe_ff_dim
    module, names = MOE_EXPERT_NAMES[family.moe]
    slots = {f"{module}.gate.weight": Slot(("moe", "router", "kernel"), (d, m.moe_experts), 1)}
    for e in range(m.moe_experts):
        for ours, theirs in names.items():
            slots[f"{module}.experts.{e}.{theirs}.weight"] = Slot(("moe", ours, "kernel"),
                                                                  (f, d) if ours == "proj" else (d, f), 1, e)
    return slots


def rope_layer_slots(m: ModelConfig, name: str, index: int) -> dict[str, Slot]:
    """HF tensor name (inside decoder layer `index`) -> Slot, for a model `m` of Llama-lineage family `name`."""
    family = FAMILIES[name]
    d, f, n, g, k = m.d_model, m.ff_dim, m.n_head, m.kv_heads, m.head_dim
    heads = {"q_proj": ("query", n), "k_proj": ("key", g), "v_proj": ("value", g)}
    slots = {"input_layernorm.weight": Slot(("norm1", "scale"), (d,)),
             f"{family.pre_mlp_norm}.weight": Slot(("norm2", "scale"), (d,)),
             "self_attn.o_proj.weight": Slot(("attn", "out", "kernel"), (n, k, d), 2),
             "mlp.gate_proj.weight": Slot(("mlp", "gate", "kernel"), (d, f), 1),
             "mlp.up_proj.weight": Slot(("mlp", "up", "kernel"), (d, f), 1),
             "mlp.down_proj.weight": Slot(("mlp", "proj", "kernel"), (f, d), 1)}
    for theirs, (ours, count) in heads.items():
        slots[f"self_attn.{theirs}.weight"] = Slot(("attn", ours, "kernel"), (d, count, k), 1)
        if m.use_bias or family.bias == "qkv":
            slots[f"self_attn.{theirs}.bias"] = Slot(("attn", ours, "bias"), (count, k))
    if m.use_bias:
        slots["self_attn.o_proj.bias"] = Slot(("attn", "out", "bias"), (d,))
        for theirs, ours in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "proj")):
            slots[f"mlp.{theirs}.bias"] = Slot(("mlp", ours, "bias"), (d if ours == "proj" else f,))
    if m.qk_norm:
        slots["self_attn.q_norm.weight"] = Slot(("attn", "query_norm", "scale"), (k,))
        slots["self_attn.k_norm.weight"] = Slot(("attn", "key_norm", "scale"), (k,))
    if m.sandwich_norm:
        slots["post_attention_layernorm.weight"] = Slot(("post_attn_norm", "scale"), (d,))
        slots["post_feedforward_layernorm.weight"] = Slot(("post_mlp_norm", "scale"), (d,))
    if m.is_moe_layer(index):
        slots = {name: slot for name, slot in slots.items() if slot.path[0] != "mlp"} | moe_slots(m, family)
    return slots


def hf_shape(slot: Slot) -> tuple[int, ...]:
    if slot.n_in is None:
        return (int(np.prod(slot.shape)),)
    return int(np.prod(slot.shape[slot.n_in:])), int(np.prod(slot.shape[:slot.n_in]))


def hf_tensor_shapes(m: ModelConfig, family: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the HF model of `m` stores (what from_pretrained expects, nothing more)."""
    d, f, v = m.d_model, m.ff_dim, m.vocab_size
    q_width = m.n_head * m.head_dim
    shapes: dict[str, tuple[int, ...]] = {}
    if family == GPT2:
        shapes.update({"transformer.wte.weight": (v, d), "transformer.wpe.weight": (m.position_limit, d),
                       "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)})
        for i in range(m.n_layer):
            p = f"transformer.h.{i}."
            shapes.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "ln_2.weight": (d,),
                           p + "ln_2.bias": (d,), p + "attn.c_attn.weight": (d, 3 * q_width),
                           p + "attn.c_attn.bias": (3 * q_width,), p + "attn.c_proj.weight": (q_width, d),
                           p + "attn.c_proj.bias": (d,), p + "mlp.c_fc.weight": (d, f), p + "mlp.c_fc.bias": (f,),
                           p + "mlp.c_proj.weight": (f, d), p + "mlp.c_proj.bias": (d,)})
    else:
        shapes.update({"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)})
        for i in range(m.n_layer):
            shapes.update({f"model.layers.{i}.{name}": hf_shape(slot)
                           for name, slot in rope_layer_slots(m, family, i).items()})
    if not m.tie_embeddings:
        shapes["lm_head.weight"] = (v, d)
    return shapes


# ---------------------------------------------------------------- gptjax params -> HF tensors


def layer_params(params: Mapping[str, Any], m: ModelConfig, index: int) -> Mapping[str, Any]:
    """Layer `index`'s param subtree as host arrays, whether the layers are scanned (stacked) or separate."""
    if m.scan_layers:
        return jax.tree_util.tree_map(lambda stacked: np.asarray(stacked)[index], params["layers"])
    return jax.tree_util.tree_map(np.asarray, params[f"layer_{index}"])


def _bias(module: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """The module's bias, or zeros of `shape` where the gptjax model has none."""
    return np.asarray(module["bias"]) if "bias" in module else np.zeros(shape, np.float32)


def _gpt2_layer_tensors(layer: Mapping[str, Any], m: ModelConfig) -> dict[str, np.ndarray]:
    d, width = m.d_model, m.n_head * m.head_dim
    attn, mlp = layer["attn"], layer["mlp"]
    return {
        "ln_1.weight": layer["norm1"]["scale"], "ln_1.bias": _bias(layer["norm1"], (d,)),
        "attn.c_attn.weight": np.concatenate([attn[p]["kernel"].reshape(d, width) for p in QKV], axis=1),
        "attn.c_attn.bias": np.concatenate([_bias(attn[p], (width,)).reshape(width) for p in QKV]),
        "attn.c_proj.weight": attn["out"]["kernel"].reshape(width, d), "attn.c_proj.bias": _bias(attn["out"], (d,)),
        "ln_2.weight": layer["norm2"]["scale"], "ln_2.bias": _bias(layer["norm2"], (d,)),
        "mlp.c_fc.weight": mlp["fc"]["kernel"], "mlp.c_fc.bias": _bias(mlp["fc"], (m.ff_dim,)),
        "mlp.c_proj.weight": mlp["proj"]["kernel"], "mlp.c_proj.bias": _bias(mlp["proj"], (d,)),
    }


def _lookup(tree: Mapping[str, Any], path: tuple[str, ...]) -> np.ndarray | None:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return np.asarray(tree)


def to_hf_layout(value: np.ndarray, slot: Slot) -> np.ndarray:
    """A gptjax param as HF stores it: a Linear weight [out, in], or a flat vector."""
    if slot.n_in is None:
        return value.reshape(-1)
    return value.reshape(hf_shape(slot)[::-1]).T


def _rope_layer_tensors(layer: Mapping[str, Any], m: ModelConfig, family: str, index: int) -> dict[str, np.ndarray]:
    """Layer `index`'s HF tensors; a bias the family always stores but `m` lacks is written as zeros."""
    tensors = {}
    for name, slot in rope_layer_slots(m, family, index).items():
        value = _lookup(layer, slot.path)
        if value is None:
            value = np.zeros(slot.shape, np.float32)
        tensors[name] = to_hf_layout(value if slot.expert is None else value[slot.expert], slot)
    return tensors


def to_hf_tensors(m: ModelConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The HF state dict (numpy, float32, HF layouts and names) of gptjax `params`, at the real vocab size."""
    family = hf_family(m)
    v = m.vocab_size
    embedding = np.asarray(params["embedding"])[:v]
    if family == GPT2:
        prefix, layer_fn = "transformer.h", lambda layer, m, i: _gpt2_layer_tensors(layer, m)
        norm_f = params["norm_f"]
        tensors = {"transformer.wte.weight": embedding, "transformer.wpe.weight": np.asarray(params["pos_embedding"]),
                   "transformer.ln_f.weight": np.asarray(norm_f["scale"]),
                   "transformer.ln_f.bias": _bias(norm_f, (m.d_model,))}
    else:
        prefix = "model.layers"
        layer_fn = lambda layer, m, i: _rope_layer_tensors(layer, m, family, i)
        tensors = {"model.embed_tokens.weight": embedding, "model.norm.weight": np.asarray(params["norm_f"]["scale"])}
    for i in tqdm(range(m.n_layer), desc=f"to {ARCHITECTURES[family]}", unit="layer", leave=False):
        for name, tensor in layer_fn(layer_params(params, m, i), m, i).items():
            tensors[f"{prefix}.{i}.{name}"] = np.asarray(tensor, np.float32)
    if not m.tie_embeddings:
        tensors["lm_head.weight"] = np.asarray(params["lm_head"])[:, :v].T
    return tensors


# ---------------------------------------------------------------- HF config -> gptjax config


def _field(hf: Mapping[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    """hf[key] checked to be of `kind` (ints > 0, floats >= 0); `default` when absent and a default is given."""
    if key not in hf or hf[key] is None:
        if default is not None:
            return default
        raise GptjaxError(f"{where} lacks the required field '{key}'")
    value = hf[key]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise GptjaxError(f"{where}: field '{key}' = {value!r} is not a valid {kind.__name__}"
                          f"{' > 0' if kind is int else ''}")
    return float(value) if kind is float else value


def _block_size(hf_limit: int, limit_name: str, block_size: int | None, where: str) -> int:
    """The gptjax block_size: as asked (never above the HF model's context), else that context capped."""
    if block_size is None:
        return min(hf_limit, BLOCK_SIZE_CAP)
    if block_size > hf_limit:
        raise GptjaxError(f"{where}: {limit_name}={hf_limit} is smaller than the block size {block_size}; the HF model "
                          f"has no positions past {hf_limit} (use a block size <= {hf_limit})")
    if block_size < 1:
        raise GptjaxError(f"block size must be >= 1, got {block_size}")
    return block_size


def _gpt2_model_config(hf: Mapping[str, Any], block_size: int | None, where: str) -> ModelConfig:
    d_model = _field(hf, "n_embd", int, where)
    n_head = _field(hf, "n_head", int, where)
    n_positions = _field(hf, "n_ctx" if "n_ctx" in hf and "n_positions" not in hf else "n_positions", int, where)
    activation = _field(hf, "activation_function", str, where, "gelu_new")
    if activation not in (*GPT2_TANH_GELUS, GPT2_EXACT_GELU):
        raise GptjaxError(f"{where}: activation_function='{activation}' is not supported; gptjax's GPT-2 MLP is the "
                          f"tanh-approximated GELU ({' or '.join(GPT2_TANH_GELUS)}) or the exact one "
                          f"('{GPT2_EXACT_GELU}')")
    for key, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("add_cross_attention", False)):
        if hf.get(key, wanted) != wanted:
            raise GptjaxError(f"{where}: {key}={hf[key]!r} is not supported (gptjax computes {key}={wanted})")
    if d_model % n_head:
        raise GptjaxError(f"{where}: n_embd={d_model} is not divisible by n_head={n_head}")
    blocks = _block_size(n_positions, "n_positions", block_size, where)
    n_inner = hf.get("n_inner")
    return ModelConfig(
        vocab_size=_field(hf, "vocab_size", int, where), block_size=blocks,
        n_layer=_field(hf, "n_layer", int, where), n_head=n_head, d_model=d_model,
        d_ff=0 if n_inner in (None, 4 * d_model) else _field(hf, "n_inner", int, where),
        norm="layernorm", norm_placement="pre", norm_eps=_field(hf, "layer_norm_epsilon", float, where, 1e-5),
        position="learned", max_positions=0 if n_positions == blocks else n_positions, mlp="gelu",
        gelu_approximate=activation != GPT2_EXACT_GELU,
        attention="dense", use_bias=True, tie_embeddings=_field(hf, "tie_word_embeddings", bool, where, True),
        dropout=_field(hf, "resid_pdrop", float, where, 0.1),
        init_std=_field(hf, "initializer_range", float, where, 0.02),
    )


def _rope_fields(rope: Any, hf: Mapping[str, Any], where: str, local: bool = False) -> dict[str, Any]:
    """ModelConfig rope fields from one `rope_parameters` entry (transformers 5) or `rope_scaling` (4.x); a rope
    gptjax does not compute is refused naming it."""
    if not isinstance(rope, dict):
        raise GptjaxError(f"{where}: rope_parameters must be an object, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in HF_ROPE_TYPES:
        raise GptjaxError(f"{where}: rope_type='{rope_type}' is not supported; gptjax computes "
                          f"{', '.join(HF_ROPE_TYPES)} rope")
    for key, allowed in (("partial_rotary_factor", (1.0, None)), ("truncate", (True, None)), ("mscale", (None,)),
                         ("mscale_all_dim", (None,))):
        if rope.get(key) not in allowed:
            raise GptjaxError(f"{where}: rope {key}={rope[key]!r} is not supported (gptjax computes "
                              f"{key}={allowed[0]})")
    theta = _field({"rope_theta": rope.get("rope_theta", hf.get("rope_theta", 10000.0))}, "rope_theta", float, where)
    if local:
        if rope_type != "default":
            raise GptjaxError(f"{where}: rope_type='{rope_type}' on sliding-window layers is not supported; gptjax "
                              f"scales the rope of global layers only")
        return {"rope_local_theta": theta}
    fields: dict[str, Any] = {"rope_theta": theta, "rope_scaling": HF_ROPE_TYPES[rope_type]}
    if rope_type != "default":
        fields["rope_factor"] = _field(rope, "factor", float, f"{where} rope_parameters")
    if rope_type in ("llama3", "yarn"):
        fields["rope_original_positions"] = _field(rope, "original_max_position_embeddings", int,
                                                   f"{where} rope_parameters")
    if rope_type == "llama3":
        fields.update(rope_low_freq_factor=_field(rope, "low_freq_factor", float, where),
                      rope_high_freq_factor=_field(rope, "high_freq_factor", float, where))
    if rope_type == "yarn":
        fields.update(rope_beta_fast=float(rope.get("beta_fast") or 32.0), rope_beta_slow=float(rope.get("beta_slow")
                                                                                                 or 1.0),
                      rope_attention_factor=float(rope.get("attention_factor") or 0.0))
    return fields


def _hf_layer_kinds(hf: Mapping[str, Any], family: Family, n_layer: int, where: str) -> list[str]:
    """Each layer's attention kind (sliding_attention / full_attention), from `layer_types` (transformers 5) or the
    4.x keys (use_sliding_window + max_window_layers for Qwen, every other layer for Gemma 2, sliding_window_pattern
    for Gemma 3, one sliding_window for every layer for Mistral)."""
    if not family.layer_types:
        return [SLIDING if hf.get("sliding_window") else FULL] * n_layer
    kinds = hf.get("layer_types")
    if kinds is None:
        if family.model_type == "gemma2":
            kinds = [SLIDING if i % 2 == 0 else FULL for i in range(n_layer)]
        elif family.model_type == "gemma3_text":
            period = _field(hf, "sliding_window_pattern", int, where, 6)
            kinds = [FULL if (i + 1) % period == 0 else SLIDING for i in range(n_layer)]
        else:
            first_sliding = hf.get("max_window_layers") or 0 if hf.get("use_sliding_window") else n_layer
            kinds = [SLIDING if i >= first_sliding else FULL for i in range(n_layer)]
    if not isinstance(kinds, list) or len(kinds) != n_layer or any(kind not in (SLIDING, FULL) for kind in kinds):
        raise GptjaxError(f"{where}: layer_types must list '{SLIDING}' or '{FULL}' for each of the {n_layer} layers, "
                          f"got {kinds!r}")
    return kinds


def shortest_period(pattern: str) -> str:
    """The shortest prefix of `pattern` that, cycled, gives `pattern` (ModelConfig.layer_pattern is cycled)."""
    for length in range(1, len(pattern) + 1):
        if all(pattern[i] == pattern[i % length] for i in range(len(pattern))):
            return pattern[:length]
    return pattern


def _attention_fields(hf: Mapping[str, Any], family: Family, n_layer: int, where: str) -> dict[str, Any]:
    kinds = _hf_layer_kinds(hf, family, n_layer, where)
    if SLIDING not in kinds:
        return {"attention": "dense"}
    window = _field(hf, "sliding_window", int, where)
    if not family.layer_types:
        return {"attention": "local", "window": window}
    return {"attention": "dense", "window": window,
            "layer_pattern": shortest_period("".join("L" if kind == SLIDING else "G" for kind in kinds))}


def _bias_fields(hf: Mapping[str, Any], family: Family, where: str) -> dict[str, Any]:
    if family.bias == "qkv":
        return {"use_bias": False, "qkv_bias": True}
    if family.bias == "none":
        return {"use_bias": False}
    attention_bias = _field(hf, "attention_bias", bool, where, False)
    if family.bias == "attention":
        if attention_bias:
            raise GptjaxError(f"{where}: attention_bias=true is not supported for {family.model_type}; gptjax puts "
                              f"biases on every projection (model.use_bias) or on q/k/v only (model.qkv_bias)")
        return {"use_bias": False}
    mlp_bias = _field(hf, "mlp_bias", bool, where, False)
    if attention_bias != mlp_bias:
        raise GptjaxError(f"{where}: attention_bias={attention_bias} with mlp_bias={mlp_bias} is not supported; gptjax "
                          f"has one switch (model.use_bias) for both")
    return {"use_bias": attention_bias}


def _mlp_fields(hf: Mapping[str, Any], family: Family, where: str) -> dict[str, Any]:
    activation = _field(hf, family.activation_key, str, where, "gelu_pytorch_tanh" if family.gemma else "silu")
    wanted = family.implies["mlp"]
    if wanted == "swiglu" and activation == "silu":
        return {"mlp": "swiglu"}
    if wanted == "geglu" and activation in (*GPT2_TANH_GELUS, GPT2_EXACT_GELU):
        return {"mlp": "geglu", "gelu_approximate": activation != GPT2_EXACT_GELU}
    raise GptjaxError(f"{where}: {family.activation_key}='{activation}' is not supported for {family.model_type}; "
                      f"gptjax computes {'silu (SwiGLU)' if wanted == 'swiglu' else 'gelu (GeGLU)'}")


def _moe_fields(hf: Mapping[str, Any], family: Family, n_layer: int, where: str) -> dict[str, Any]:
    """ModelConfig MoE fields from a Mixtral / Qwen3-MoE config.json (no experts: a dense model)."""
    if not family.moe:
        return {}
    if hf.get("router_jitter_noise"):
        raise GptjaxError(f"{where}: router_jitter_noise={hf['router_jitter_noise']!r} is not supported; gptjax routes "
                          f"without noise (set it to 0.0)")
    top_k = _field(hf, "num_experts_per_tok", int, where, 2)
    # HF's balance loss sums expert fractions over the k choices (k times gptjax's fraction of token-slots)
    common = {"moe_top_k": top_k, "moe_z_loss_weight": 0.0,
              "moe_aux_loss_weight": top_k * _field(hf, "router_aux_loss_coef", float, where, 0.001)}
    if family.moe == "mixtral":
        return {**common, "moe_experts": _field(hf, "num_local_experts", int, where, 8)}
    experts_key = "num_experts" if "num_experts" in hf else "num_local_experts"  # transformers 5 writes the latter
    if not hf.get(experts_key):
        return {}
    step = _field(hf, "decoder_sparse_step", int, where, 1)
    dense = hf.get("mlp_only_layers") or []
    if dense != list(range(len(dense))) or (dense and step != 1) or len(dense) >= n_layer:
        raise GptjaxError(f"{where}: mlp_only_layers={dense!r} with decoder_sparse_step={step} is not supported; "
                          f"gptjax keeps the first k layers dense (model.moe_first_dense) then every n-th layer MoE, "
                          f"and not both at once")
    return {**common, "moe_experts": _field(hf, experts_key, int, where), "moe_every": step,
            "moe_first_dense": len(dense), "moe_d_ff": _field(hf, "moe_intermediate_size", int, where),
            "moe_renormalize": _field(hf, "norm_topk_prob", bool, where, False)}


def _rope_family_model_config(hf: Mapping[str, Any], family: Family, block_size: int | None,
                              where: str) -> ModelConfig:
    d_model = _field(hf, "hidden_size", int, where)
    n_head = _field(hf, "num_attention_heads", int, where)
    n_kv_head = _field(hf, "num_key_value_heads", int, where, n_head)
    n_layer = _field(hf, "num_hidden_layers", int, where)
    head_dim = _field(hf, "head_dim", int, where, d_model // n_head if d_model % n_head == 0 else None)
    if n_head % n_kv_head:
        raise GptjaxError(f"{where}: num_attention_heads={n_head} is not divisible by num_key_value_heads={n_kv_head}")
    if hf.get("use_bidirectional_attention"):
        raise GptjaxError(f"{where}: use_bidirectional_attention=true is not supported; gptjax models are causal")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    per_kind = isinstance(rope, dict) and FULL in rope
    rope_fields = _rope_fields(rope[FULL] if per_kind else rope, hf, where)
    local_rope = rope.get(SLIDING, {}) if per_kind else {"rope_theta": hf.get("rope_local_base_freq",
                                                                              rope_fields["rope_theta"])}
    attention = _attention_fields(hf, family, n_layer, where)
    if attention.get("layer_pattern"):
        rope_fields |= _rope_fields(local_rope, hf, where, local=True)
        if rope_fields["rope_local_theta"] == rope_fields["rope_theta"]:
            rope_fields["rope_local_theta"] = 0.0
        if not family.rope_per_kind and rope_fields["rope_scaling"] != "none":
            raise GptjaxError(f"{where}: a scaled rope on a model with sliding-window layers is not supported; gptjax "
                              f"scales the rope of global layers only")
    gemma = {}
    if family.gemma:
        scalar = _field(hf, "query_pre_attn_scalar", int, where, head_dim)
        gemma = {"query_scale_dim": 0 if scalar == head_dim else scalar,
                 "attn_softcap": _field(hf, "attn_logit_softcapping", float, where, 0.0),
                 "logit_softcap": _field(hf, "final_logit_softcapping", float, where, 0.0)}
    max_positions = _field(hf, "max_position_embeddings", int, where, 2048)
    implied = {key: value for key, value in family.implies.items() if key != "mlp"}
    implied |= _moe_fields(hf, family, n_layer, where)
    return ModelConfig(
        vocab_size=_field(hf, "vocab_size", int, where),
        block_size=_block_size(max_positions, "max_position_embeddings", block_size, where),
        n_layer=n_layer, n_head=n_head, n_kv_head=0 if n_kv_head == n_head else n_kv_head, d_model=d_model,
        d_head=0 if d_model == n_head * head_dim else head_dim, d_ff=_field(hf, "intermediate_size", int, where),
        norm="rmsnorm", norm_placement="pre", norm_eps=_field(hf, "rms_norm_eps", float, where, 1e-6),
        position="rope", tie_embeddings=_field(hf, "tie_word_embeddings", bool, where, family.gemma),
        init_std=_field(hf, "initializer_range", float, where, 0.02),
        **rope_fields, **attention, **_bias_fields(hf, family, where), **_mlp_fields(hf, family, where), **gemma,
        **implied,
    )


def model_config_from_hf(hf: Mapping[str, Any], block_size: int | None = None,
                         where: str = "config.json") -> tuple[str, ModelConfig]:
    """(family, gptjax ModelConfig) from an HF config.json dict; unsupported settings -> one GptjaxError.

    block_size: the gptjax training window; None = the HF context (n_positions / max_position_embeddings) capped
    at BLOCK_SIZE_CAP. The learned position table always keeps all n_positions rows."""
    model_type = hf.get("model_type")
    if model_type == GPT2:
        return GPT2, _gpt2_model_config(hf, block_size, where)
    if model_type in FAMILIES:
        model = _rope_family_model_config(hf, FAMILIES[model_type], block_size, where)
        try:
            config_lib.validate(Config(model=model))
        except GptjaxError as error:
            raise GptjaxError(f"{where}: the model it describes is not one gptjax can build: {error}") from None
        return model_type, model
    raise GptjaxError(f"{where}: model_type {model_type!r} is not supported; gptjax imports "
                      f"{', '.join(repr(name) for name in ARCHITECTURES)}")


# ---------------------------------------------------------------- HF tensors -> gptjax params


def _pad_rows(table_VD: np.ndarray, rows: int) -> np.ndarray:
    """`table_VD` with zero rows appended up to `rows` (the padded vocabulary)."""
    return np.concatenate([table_VD, np.zeros((rows - table_VD.shape[0], table_VD.shape[1]), table_VD.dtype)])


def _gpt2_layer_params(t: Mapping[str, np.ndarray], m: ModelConfig) -> dict:
    d, n, k = m.d_model, m.n_head, m.head_dim
    q_w, k_w, v_w = np.split(t["attn.c_attn.weight"], 3, axis=1)
    q_b, k_b, v_b = np.split(t["attn.c_attn.bias"], 3)
    return {
        "norm1": {"scale": t["ln_1.weight"], "bias": t["ln_1.bias"]},
        "norm2": {"scale": t["ln_2.weight"], "bias": t["ln_2.bias"]},
        "attn": {name: {"kernel": w.reshape(d, n, k), "bias": b.reshape(n, k)}
                 for name, w, b in zip(QKV, (q_w, k_w, v_w), (q_b, k_b, v_b))}
        | {"out": {"kernel": t["attn.c_proj.weight"].reshape(n, k, d), "bias": t["attn.c_proj.bias"]}},
        "mlp": {"fc": {"kernel": t["mlp.c_fc.weight"], "bias": t["mlp.c_fc.bias"]},
                "proj": {"kernel": t["mlp.c_proj.weight"], "bias": t["mlp.c_proj.bias"]}},
    }


def from_hf_layout(tensor: np.ndarray, slot: Slot) -> np.ndarray:
    """An HF tensor in gptjax's layout: a Linear weight [out, in] transposed and unflattened, a vector reshaped."""
    if slot.n_in is None:
        return tensor.reshape(slot.shape)
    return np.ascontiguousarray(tensor.T).reshape(slot.shape)


def _rope_layer_params(t: Mapping[str, np.ndarray], m: ModelConfig, family: str, index: int) -> dict:
    layer: dict = {}
    experts: dict[tuple[str, ...], list] = {}
    for name, slot in rope_layer_slots(m, family, index).items():
        if slot.expert is not None:
            experts.setdefault(slot.path, [None] * m.moe_experts)[slot.expert] = from_hf_layout(t[name], slot)
            continue
        node = layer
        for key in slot.path[:-1]:
            node = node.setdefault(key, {})
        node[slot.path[-1]] = from_hf_layout(t[name], slot)
    for path, per_expert in experts.items():
        node = layer
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.stack(per_expert)
    return layer


def params_from_hf(m: ModelConfig, family: str, tensors: Mapping[str, np.ndarray]) -> dict:
    """gptjax params (non-scanned layout, float32, vocab padded with zero rows) from an HF state dict whose names
    and shapes match `hf_tensor_shapes(m, family)`."""
    get = lambda name: np.asarray(tensors[name], np.float32)
    if family == GPT2:
        prefix, layer_fn = "transformer.h", lambda layer, m, i: _gpt2_layer_params(layer, m)
        params = {"embedding": _pad_rows(get("transformer.wte.weight"), m.padded_vocab),
                  "pos_embedding": get("transformer.wpe.weight"),
                  "norm_f": {"scale": get("transformer.ln_f.weight"), "bias": get("transformer.ln_f.bias")}}
    else:
        prefix = "model.layers"
        layer_fn = lambda layer, m, i: _rope_layer_params(layer, m, family, i)
        params = {"embedding": _pad_rows(get("model.embed_tokens.weight"), m.padded_vocab),
                  "norm_f": {"scale": get("model.norm.weight")}}
    for i in range(m.n_layer):
        layer_prefix = f"{prefix}.{i}."
        layer_tensors = {name[len(layer_prefix):]: get(name) for name in tensors if name.startswith(layer_prefix)}
        params[f"layer_{i}"] = layer_fn(layer_tensors, m, i)
    if not m.tie_embeddings:
        params["lm_head"] = np.ascontiguousarray(_pad_rows(get("lm_head.weight"), m.padded_vocab).T)
    return params


# ---------------------------------------------------------------- tokenizers


def _special_token_entry(token_id: int) -> dict:
    return {str(token_id): {"content": EOT, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True}}


def char_tokenizer_json(tok: tokenizers.CharTokenizer) -> dict:
    """A `tokenizers` tokenizer.json giving the char tokenizer's ids: a WordLevel vocabulary of the characters,
    input split into single characters, pieces fused on decode; `<|endoftext|>` is a special token."""
    vocab = {char: index for index, char in enumerate(tok.chars)} | {EOT: tok.eot_id}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": tok.eot_id, **_special_token_entry(tok.eot_id)[str(tok.eot_id)]}],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated", "invert": False},
        "post_processor": None, "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def _sentencepiece_unk(model_proto: bytes) -> str | None:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=model_proto)
    return processor.id_to_piece(processor.unk_id()) if processor.unk_id() >= 0 else None


def _json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _hf_tokenizer_json(tok: tokenizers.Tokenizer) -> bytes:
    """The tokenizer.json of an hf tokenizer: its own bytes, or with the run's extra special tokens (chat role
    markers of `WithSpecialTokens`) added as HF special tokens at the ids gptjax gives them."""
    base = tokenizers.base_tokenizer(tok)
    if not isinstance(tok, tokenizers.WithSpecialTokens):
        return base.tokenizer_json
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HfBackend

    backend = HfBackend.from_str(base.tokenizer_json.decode("utf-8"))
    backend.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in tok.specials])
    for text, token_id in tok.special_ids().items():
        if backend.token_to_id(text) != token_id:
            raise GptjaxError(f"the special token {text!r} is already in the hf tokenizer's vocabulary at id "
                              f"{backend.token_to_id(text)}, not {token_id}; it cannot be exported as a new token")
    return backend.to_str().encode("utf-8")


def hf_family_tokenizer_files(tok: tokenizers.Tokenizer, model_max_length: int) -> dict[str, bytes]:
    """tokenizer.json (verbatim), tokenizer_config.json and special_tokens_map.json of an hf tokenizer, which
    `AutoTokenizer.from_pretrained` loads as a PreTrainedTokenizerFast encoding exactly as gptjax does."""
    base = tokenizers.base_tokenizer(tok)
    special = {"eos_token": base.eos_token} | ({"bos_token": base.bos_token} if base.bos_token is not None else {})
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": base.clean_up_tokenization_spaces, "bos_token": None, **special}
    if base.chat_template is not None:
        config["chat_template"] = base.chat_template
    return {"tokenizer.json": _hf_tokenizer_json(tok), "tokenizer_config.json": _json_bytes(config),
            "special_tokens_map.json": _json_bytes(special)}


def hf_tokenizer_files(tok: tokenizers.Tokenizer, model_max_length: int) -> tuple[dict[str, bytes], str]:
    """(file name -> bytes, a note on how the tokenizer was written) for an HF model directory."""
    if tok.kind == "hf":
        return (hf_family_tokenizer_files(tok, model_max_length),
                "Hugging Face tokenizer.json as it was read, with a tokenizer_config.json (PreTrainedTokenizerFast)")
    added = _special_token_entry(tok.eot_id)
    for text, token_id in (tok.special_ids() if isinstance(tok, tokenizers.WithSpecialTokens) else {}).items():
        added.update({str(token_id): {**added[str(tok.eot_id)], "content": text}})
    base = {"eos_token": EOT, "model_max_length": model_max_length, "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": added}
    if tok.kind == "gpt2_bpe":
        files = tok.files()
        config = {**base, "tokenizer_class": "GPT2Tokenizer", "bos_token": EOT, "unk_token": EOT,
                  "add_prefix_space": False, "errors": "replace"}
        return ({"vocab.json": files["vocab.json"], "merges.txt": files["merges.txt"],
                 "tokenizer_config.json": _json_bytes(config),
                 "special_tokens_map.json": _json_bytes({"bos_token": EOT, "eos_token": EOT, "unk_token": EOT})},
                "GPT-2 BPE tokenizer (vocab.json + merges.txt)")
    if tok.kind == "sentencepiece":
        unk = _sentencepiece_unk(tok.model_proto)
        config = {**base, "tokenizer_class": "LlamaTokenizer", "bos_token": None, "unk_token": unk, "pad_token": None,
                  "add_bos_token": False, "add_eos_token": False, "legacy": False}
        return ({"tokenizer.model": tok.model_proto, "tokenizer_config.json": _json_bytes(config),
                 "special_tokens_map.json": _json_bytes({"eos_token": EOT, "unk_token": unk})},
                "sentencepiece tokenizer (tokenizer.model, LlamaTokenizer, no BOS)")
    if tok.kind == "char":
        config = {**base, "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT}
        return ({"tokenizer.json": _json_bytes(char_tokenizer_json(tok)), "tokenizer_config.json": _json_bytes(config),
                 "special_tokens_map.json": _json_bytes({"bos_token": EOT, "eos_token": EOT})},
                "char tokenizer as a WordLevel tokenizer.json (HF has no character tokenizer class)")
    raise GptjaxError(f"tokenizer kind '{tok.kind}' has no Hugging Face export")


def _json_file(path: Path) -> dict:
    return export.read_json_object(path, "Hugging Face file", "fix it or save the model again with save_pretrained")


def sentencepiece_with_eot(model_proto: bytes, eos_token: str | None, eos_id: int | None, where: str) -> bytes:
    """The sentencepiece model with a `<|endoftext|>` piece, which gptjax uses as end-of-text.

    A model that has the piece is returned unchanged. Otherwise the EOS control piece (named by `eos_token`, else
    at `eos_id`, else the model's own eos) is renamed `<|endoftext|>`: ids and encodings stay the same and gptjax's
    end-of-text id becomes the HF eos id."""
    import sentencepiece as spm
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_proto)
    except DecodeError as e:
        raise GptjaxError(f"{where} is not a sentencepiece model ({e})") from None
    names = [piece.piece for piece in proto.pieces]
    if EOT in names:
        return model_proto
    processor = spm.SentencePieceProcessor(model_proto=model_proto)
    if eos_token is not None and eos_token in names:
        target = names.index(eos_token)
    elif eos_id is not None:
        target = eos_id
    elif processor.eos_id() >= 0:
        target = processor.eos_id()
    else:
        raise GptjaxError(f"{where} has neither a '{EOT}' piece nor an EOS token, so gptjax has no end-of-text id; "
                          f"set eos_token in tokenizer_config.json or eos_token_id in config.json")
    if not 0 <= target < len(names):
        raise GptjaxError(f"{where}: the eos id {target} is outside the sentencepiece vocabulary of {len(names)}")
    piece = proto.pieces[target]
    if piece.type != sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL:
        raise GptjaxError(f"{where}: the EOS piece {piece.piece!r} (id {target}) is not a control symbol, so it cannot "
                          f"stand for '{EOT}' without changing how text is tokenized")
    old_name = piece.piece
    piece.piece = EOT
    spec = proto.trainer_spec
    for field in ("unk_piece", "bos_piece", "eos_piece", "pad_piece"):
        if getattr(spec, field) == old_name:
            setattr(spec, field, EOT)
    return proto.SerializeToString()


def _char_tokenizer_from_json(spec: dict) -> tokenizers.CharTokenizer | None:
    """A char tokenizer if `spec` is exactly what `char_tokenizer_json` writes (ids 0..n-1 single characters,
    `<|endoftext|>` = n, per-character split); else None."""
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    if model.get("type") != "WordLevel" or pre.get("type") != "Split" or pre.get("pattern") != {"Regex": r"[\s\S]"}:
        return None
    vocab = model.get("vocab") or {}
    if not isinstance(vocab, dict) or not all(isinstance(index, int) for index in vocab.values()):
        return None
    by_id = sorted((index, token) for token, index in vocab.items())
    chars = [token for _, token in by_id[:-1]]
    if (not by_id or by_id[-1] != (len(chars), EOT) or [index for index, _ in by_id] != list(range(len(by_id)))
            or any(len(token) != 1 for token in chars)):
        return None
    return tokenizers.CharTokenizer("".join(chars))


def _hf_family_tokenizer(src: Path, hf: Mapping[str, Any]) -> tokenizers.HfTokenizer:
    """The hf tokenizer of `src`'s tokenizer.json; why it cannot be read, with where, as one GptjaxError."""
    try:
        return tokenizers.HfTokenizer.from_dir(src, dict(hf))
    except GptjaxError as e:
        raise GptjaxError(f"{src} holds tokenizer files gptjax cannot read (tokenizer.json): {e} (or pass "
                          f"--tokenizer-dir DIR with {READABLE_TOKENIZERS})") from None


def tokenizer_from_hf_dir(src: Path, hf: Mapping[str, Any]) -> tokenizers.Tokenizer | None:
    """The gptjax tokenizer of an HF model directory, or None when it holds no tokenizer gptjax can use.

    vocab.json + merges.txt -> gpt2_bpe; tokenizer.model -> sentencepiece (see `sentencepiece_with_eot`), or hf
    when it is a tiktoken BPE file (Llama 3's original release; see `HfTokenizer.from_tiktoken_dir`) and no
    tokenizer.json is beside it; a tokenizer.json written by `char_tokenizer_json` -> char; a gptjax tokenizer
    directory (its tokenizer.json names a `kind`, as `gptjax.data.tokenizer.save` writes it) -> that tokenizer; any
    other tokenizer.json -> hf (its special tokens from the directory's tokenizer_config.json,
    generation_config.json and `hf`). The families after GPT-2 and Llama ship their fast tokenizer.json beside a
    vocab.json or tokenizer.model (Qwen, Mistral, Gemma): there the tokenizer.json is what `AutoTokenizer` loads, so
    it is what gptjax reads."""
    if hf.get("model_type") not in (GPT2, LLAMA) and (src / "tokenizer.json").is_file():
        spec = _json_file(src / "tokenizer.json")
        if "kind" not in spec and _char_tokenizer_from_json(spec) is None:
            return _hf_family_tokenizer(src, hf)
    if (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        return tokenizers.Gpt2BpeAdapter.from_dir(src)
    # a tiktoken file is text, which protobuf may parse without error, so it is recognised first
    ranks = tiktoken_bpe.read_ranks((src / "tokenizer.model").read_bytes()) if (src / "tokenizer.model").is_file() \
        else None
    if ranks is not None and not (src / "tokenizer.json").is_file():
        return tokenizers.HfTokenizer.from_tiktoken_dir(src, ranks)
    if (src / "tokenizer.model").is_file() and ranks is None:
        tok_config = _json_file(src / "tokenizer_config.json") if (src / "tokenizer_config.json").is_file() else {}
        generation = _json_file(src / "generation_config.json") if (src / "generation_config.json").is_file() else {}
        eos_id = tokenizers.first_token_id(hf.get("eos_token_id"))
        eos_id = eos_id if eos_id is not None else tokenizers.first_token_id(generation.get("eos_token_id"))
        eos_token = tokenizers.special_token_text(tok_config.get("eos_token"))
        proto = sentencepiece_with_eot((src / "tokenizer.model").read_bytes(), eos_token, eos_id,
                                       str(src / "tokenizer.model"))
        return tokenizers.SentencePieceTokenizer(proto)
    if (src / "tokenizer.json").is_file():
        spec = _json_file(src / "tokenizer.json")
        if "kind" in spec:
            return tokenizers.load(src)
        return _char_tokenizer_from_json(spec) or _hf_family_tokenizer(src, hf)
    return None


def model_tokenizer(src: Path, hf: Mapping[str, Any], tokenizer_dir: Path | None) -> tokenizers.Tokenizer | None:
    """The tokenizer to pair with the model in `src`: the one in `tokenizer_dir` when given (which must hold
    one), else the one in `src`; None when `src` holds no tokenizer files at all (a weights-only checkpoint)."""
    if tokenizer_dir is not None:
        if not tokenizer_dir.is_dir():
            raise GptjaxError(f"--tokenizer-dir {tokenizer_dir} is not a directory")
        tokenizer = tokenizer_from_hf_dir(tokenizer_dir, hf)
        if tokenizer is None:
            raise GptjaxError(f"--tokenizer-dir {tokenizer_dir} holds no tokenizer gptjax can read: "
                              f"{READABLE_TOKENIZERS}")
        return tokenizer
    tokenizer = tokenizer_from_hf_dir(src, hf)
    present = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if tokenizer is None and present:
        raise GptjaxError(f"{src} holds tokenizer files gptjax cannot read ({', '.join(present)}); pass "
                          f"--tokenizer-dir DIR with {READABLE_TOKENIZERS}, or import the weights alone from a copy "
                          f"of {src} without them")
    return tokenizer


# ---------------------------------------------------------------- files


def weight_files(src: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (model.safetensors, or the shards of its index)."""
    single, index = src / WEIGHTS_FILE, src / WEIGHTS_INDEX_FILE
    if single.is_file():
        return {name: single for name in export.safetensors_shapes(single)}
    if index.is_file():
        weight_map = _json_file(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise GptjaxError(f"{index} has no weight_map")
        located = {}
        for name, file_name in weight_map.items():
            shard = src / str(file_name)
            if Path(file_name).name != file_name or not shard.is_file():
                raise GptjaxError(f"{index} names shard '{file_name}' for {name}, which is not a file in {src}")
            located[name] = shard
        return located
    pickles = [name for name in PICKLE_WEIGHTS_FILES if (src / name).is_file()]
    if pickles:
        raise GptjaxError(
            f"{src} holds {pickles[0]} (a torch pickle) and no {WEIGHTS_FILE}; gptjax does not unpickle weights. "
            f"Convert it once with transformers: python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{src}').save_pretrained('{src}-safetensors')\" and import that directory")
    raise GptjaxError(f"{src} holds no weights: expected {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} "
                      f"(a transformers save_pretrained directory)")


def with_base_prefix(name: str, family: str) -> str:
    """`name` as a GPT2LMHeadModel / LlamaForCausalLM state dict spells it. Base-model checkpoints (such as the
    original GPT-2 release: `h.0.attn.c_attn.weight`, `wte.weight`) lack the `transformer.` / `model.` prefix."""
    prefix = BASE_MODEL_PREFIXES[family]
    return name if name.startswith(prefix) or name == "lm_head.weight" else prefix + name


def stored_tensor_names(located: Mapping[str, Path], m: ModelConfig, family: str) -> dict[str, str]:
    """{HF name: name as stored} of the tensors to read, after checking every stored name and shape against the
    config (buffers such as GPT-2's `attn.bias` causal mask and a tied model's `lm_head.weight` are skipped)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in sorted(set(located.values())):
        for name, shape in export.safetensors_shapes(shard).items():
            if located.get(name) == shard:
                shapes[name] = shape
    indexed_but_absent = sorted(set(located) - set(shapes))
    if indexed_but_absent:
        raise GptjaxError(f"{located[indexed_but_absent[0]]} lacks tensor '{indexed_but_absent[0]}' that "
                          f"{WEIGHTS_INDEX_FILE} places there")
    where = f"the weights in {next(iter(located.values())).parent}"
    if m.n_layer > len(shapes):  # every layer stores tensors: an untrusted count is bounded before anything is built
        raise GptjaxError(f"config.json gives {m.n_layer} layers, but {where} hold only {len(shapes)} tensors; the "
                          f"config belongs to another model or was edited")
    expected = hf_tensor_shapes(m, family)
    stored_as: dict[str, str] = {}
    for stored in sorted(shapes):
        name = with_base_prefix(stored, family)
        if name not in expected and (name.endswith(IGNORED_TENSOR_SUFFIXES) or name == "lm_head.weight"):
            continue
        if name in stored_as:
            raise GptjaxError(f"the weights store '{name}' twice (as '{stored_as[name]}' and '{stored}')")
        stored_as[name] = stored
    missing = sorted(set(expected) - set(stored_as))
    unexpected = sorted(set(stored_as) - set(expected))
    if missing:
        raise GptjaxError(f"{where} lack tensor '{missing[0]}'{export.and_more(missing)}, which config.json implies")
    if unexpected:
        raise GptjaxError(f"{where} have tensor '{stored_as[unexpected[0]]}'{export.and_more(unexpected)}, which "
                          f"config.json does not imply")
    for name, shape in expected.items():
        if tuple(shapes[stored_as[name]]) != shape:
            raise GptjaxError(f"{where}: tensor '{stored_as[name]}' has shape {list(shapes[stored_as[name]])} but "
                              f"config.json implies {list(shape)}")
    return stored_as


def read_hf_tensors(located: Mapping[str, Path], stored_as: Mapping[str, str]) -> dict[str, np.ndarray]:
    """{HF name: float32 array} of the tensors in `stored_as`, shard by shard."""
    by_shard: dict[Path, list[str]] = {}
    for stored in stored_as.values():
        by_shard.setdefault(located[stored], []).append(stored)
    hf_name = {stored: name for name, stored in stored_as.items()}
    tensors: dict[str, np.ndarray] = {}
    for shard, shard_names in by_shard.items():
        tensors.update((hf_name[stored], array) for stored, array in export.read_safetensors_lazily(shard, shard_names))
    return tensors


@dataclasses.dataclass(frozen=True)
class HfModel:
    """An HF model directory read into gptjax terms: family, model config, params and (if present) tokenizer."""

    family: str
    model: ModelConfig
    params: dict
    tokenizer: tokenizers.Tokenizer | None
    hf_config: dict


def read_hf_dir(src: str | Path, block_size: int | None = None, tokenizer_dir: str | Path | None = None) -> HfModel:
    """Reads a local `save_pretrained` directory (config.json + safetensors weights [+ tokenizer files]).

    The tokenizer comes from `tokenizer_dir` when given, else from `src` (none for a weights-only directory).
    Every tensor's name and shape is checked against config.json before any weight is read, and every tensor
    read must be finite floats; the tokenizer's vocabulary must fit config.json's vocab_size."""
    src = Path(src)
    if not src.is_dir():
        raise GptjaxError(f"--src {src} is not a directory (give a local transformers save_pretrained directory)")
    if not (src / "config.json").is_file():
        raise GptjaxError(f"{src} has no config.json; it is not a transformers save_pretrained directory")
    hf = _json_file(src / "config.json")
    family, model = model_config_from_hf(hf, block_size, str(src / "config.json"))
    located = weight_files(src)
    stored_as = stored_tensor_names(located, model, family)
    tokenizer = model_tokenizer(src, hf, None if tokenizer_dir is None else Path(tokenizer_dir))
    if tokenizer is not None:
        export.check_tokenizer_fits(tokenizer, model, f"in {tokenizer_dir or src}",
                                    f"pass a --tokenizer-dir whose vocabulary fits the model ({src / 'config.json'})")
    params = params_from_hf(model, family, read_hf_tensors(located, stored_as))
    export.check_param_shapes({k: v.shape for k, v in export.flatten_params(params).items()},
                              export.expected_param_shapes(model), f"the params converted from {src}")
    return HfModel(family, model, params, tokenizer, hf)


def imported_config(model: ModelConfig, tokenizer: tokenizers.Tokenizer | None, name: str, workdir: Path) -> Config:
    """The Config of an imported workdir: the model as read, default training settings, and data expected in
    WORKDIR/data (prepared with the imported tokenizer), so `gptjax train` can continue from step 0. Without a
    tokenizer the config names no data: such a model cannot be trained."""
    if tokenizer is None:
        data = DataConfig(dataset="", path="")
    else:
        data = DataConfig(dataset="", path=str(workdir / "data"), tokenizer=tokenizer.kind,
                          vocab_size=tokenizer.vocab_size if tokenizer.kind == "sentencepiece" else 0)
    cfg = Config(name=name, model=model, data=data)
    config_lib.validate(cfg)
    return cfg


def next_steps(tokenizer: tokenizers.Tokenizer | None, workdir: Path) -> str:
    """What an imported workdir is good for and how to continue training it (one sentence, for the user)."""
    if tokenizer is None:
        return (f"it works on token ids only (gptjax.load('{workdir}').logits / token_logprobs / generate_ids); text "
                f"generation, eval and training need a tokenizer: to continue training, import again with "
                f"--tokenizer-dir DIR (HF tokenizer files, or GPT-2 vocab.json + merges.txt)")
    return (f"to continue training prepare data with its tokenizer (`gptjax prepare --input TEXT... --out "
            f"{workdir / 'data'} --tokenizer {tokenizer.kind} --tokenizer-dir {workdir / export.TOKENIZER_DIR}`) and "
            f"run `gptjax train --config {workdir / export.EXPERIMENT_FILE} --workdir {workdir}`")


def import_hf(src: str | Path, workdir: str | Path, block_size: int | None = None,
              tokenizer_dir: str | Path | None = None, hub_source: str | None = None) -> tuple[Config, HfModel]:
    """Imports an HF model directory into a new gptjax workdir (step-0 checkpoint); returns (config, model read).

    The tokenizer is `tokenizer_dir`'s when given, else `src`'s; a weights-only `src` imports without one.
    `hub_source`: the pinned Hub id (`ORG/NAME@COMMIT`) `src` is the cached snapshot of, recorded instead of the
    cache path."""
    src = Path(src)
    workdir = Path(workdir).absolute()
    fileio.require_empty_destination(workdir, "--workdir")
    hf_model = read_hf_dir(src, block_size, tokenizer_dir)
    name = hub_source.split("@")[0].split("/")[-1] if hub_source else src.absolute().name
    cfg = imported_config(hf_model.model, hf_model.tokenizer, f"{hf_model.family}-{name}", workdir)
    provenance = {"format": "hf", "src": hub_source or str(src.absolute()), "model_type": hf_model.family,
                  "architectures": hf_model.hf_config.get("architectures"),
                  "transformers_version": hf_model.hf_config.get("transformers_version"),
                  "tokenizer_dir": None if tokenizer_dir is None else str(Path(tokenizer_dir).absolute())}
    advice = next_steps(hf_model.tokenizer, workdir)
    header = (f"Imported from {hub_source or src.absolute()} ({ARCHITECTURES[hf_model.family]}).\n\n"
              f"{advice[0].upper()}{advice[1:]}.\n"
              f"Only the fields gptjax lets a resumed run change (e.g. train.steps) may differ from this file.\n")
    run_lib.write_workdir(cfg, hf_model.params, hf_model.tokenizer, workdir, provenance, header)
    return cfg, hf_model


def export_hf(cfg: Config, params: Mapping[str, Any], tokenizer: tokenizers.Tokenizer | None, out: str | Path,
              dtype: str = "float32") -> list[str]:
    """Writes the HF twin of a gptjax model into `out` (absent or empty; appears only when complete).

    A model without a tokenizer is written as weights + config.json only (no bos/eos ids, no generation config).
    Returns notes for the user (how the tokenizer was written, zero biases)."""
    m = cfg.model
    family = hf_family(m)
    if dtype not in export.EXPORT_DTYPES:
        raise GptjaxError(f"export dtype '{dtype}' is not one of {', '.join(export.EXPORT_DTYPES)}")
    if tokenizer is not None:
        export.check_tokenizer_fits(tokenizer, m, "of the model", "the workdir's config and tokenizer do not match")
    tensors = to_hf_tensors(m, jax.device_get(params))
    expected = hf_tensor_shapes(m, family)
    if {name: tensor.shape for name, tensor in tensors.items()} != expected:
        raise RuntimeError("gptjax bug: the converted tensors do not match the HF layout of hf_tensor_shapes")
    max_length = m.position_limit if family == GPT2 else m.block_size
    if tokenizer is None:
        tokenizer_files, tokenizer_note, eot_id = {}, "no tokenizer (the model has none): weights and config only", None
    else:
        (tokenizer_files, tokenizer_note), eot_id = hf_tokenizer_files(tokenizer, max_length), tokenizer.eot_id
    notes = [tokenizer_note]
    if family == GPT2 and not m.use_bias:
        notes.append("model.use_bias=False written as zero biases (HF GPT-2 always has biases; outputs are the same)")
    if family != GPT2 and FAMILIES[family].bias == "qkv" and not m.qkv_bias:
        notes.append(f"model.qkv_bias=False written as zero biases on q/k/v ({ARCHITECTURES[family]} always has them; "
                     f"outputs are the same)")
    with fileio.staged_directory(Path(out), "--out directory") as staging:
        export.write_safetensors(staging / WEIGHTS_FILE, tensors, dtype, {"format": "pt"})
        bos_id = getattr(tokenizer, "bos_id", None)
        export.write_json(staging / "config.json", hf_config(m, eot_id, dtype, bos_id))
        if eot_id is not None:
            export.write_json(staging / "generation_config.json", generation_config(eot_id, bos_id))
        for name, data in tokenizer_files.items():
            fileio.write_bytes_atomic(staging / name, data)
    return notes
