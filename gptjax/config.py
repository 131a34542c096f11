"""Run configuration: frozen dataclasses, built from ml_collections experiment files, validated in one place.

An experiment file (`experiments/X.py`) defines `get_config()` returning `base_config()` with fields changed.
The base ConfigDict is type-locked, so a misspelt key or a wrong value type fails on assignment; `--config.a.b=v`
command-line overrides go through the same checks. `to_config` turns the result into an immutable `Config`.
A run's saved `config.json` loads the same way (`load_experiment`), so `--config RUN/config.json` reruns a run.

Each field declares its allowed values (`bounded`, `choice`) and whether a resumed run may change it (`Resume`);
`validate` checks every declared range, then the rules that relate fields, and `resume_changes` sorts what a
resumed run changed by those declarations.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import math
import re
import traceback
from pathlib import Path
from typing import Any, NamedTuple, get_type_hints

import ml_collections

from gptjax.errors import GptjaxError
from gptjax.fileio import read_json

NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
MLPS = ("gelu", "swiglu", "geglu")
ROPE_SCALINGS = ("none", "linear", "llama3", "yarn")
LAYER_KINDS = {"L": "local", "G": "global"}  # model.layer_pattern letters
ATTENTION_PATTERNS = ("dense", "local", "strided")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "save_dots", "save_attn_out")
DTYPES = ("float32", "bfloat16", "float16")
MOE_ROUTERS = ("softmax_topk", "topk_softmax")
MOE_DISPATCHES = ("dropless", "capacity")
SCHEDULES = ("cosine", "wsd", "constant", "linear", "inverse_sqrt", "cosine_restarts")
WSD_DECAYS = ("linear", "cosine", "1-sqrt")  # the shape of WSD's final decay
OPTIMIZERS = ("adamw", "muon", "lion", "adafactor", "sgd")
# the optimizer settings that only some optimizers read (train.optimizer values); changing one of them from its
# default while another optimizer is chosen is an error
OPTIMIZER_SETTINGS = {
    "beta1": ("adamw", "muon", "lion"), "beta2": ("adamw", "muon", "lion"), "eps": ("adamw", "muon"),
    "muon_lr": ("muon",), "muon_momentum": ("muon",), "muon_ns_steps": ("muon",),
    "sgd_momentum": ("sgd",), "adafactor_factor_min_dim": ("adafactor",),
}
OBJECTIVES = ("lm", "classify", "sft", "dpo")
FINETUNE_OBJECTIVES = ("classify", "sft", "dpo")  # objectives that start from train.init_from and read records
LORA_TARGETS = ("q", "k", "v", "o", "mlp")
FINETUNE_TASKS = ("sms_spam", "instruction", "preference", "classification")
TEMPLATES = ("alpaca", "chat", "hf_chat")
TOKENIZERS = ("char", "sentencepiece", "gpt2_bpe", "hf")
SENTENCEPIECE_MODEL_TYPES = ("bpe", "unigram")
DEDUP_MODES = ("none", "exact", "near")
BOILERPLATE_MODES = ("none", "line", "paragraph")
TXT_MODES = ("file", "blank_lines")
# the downstream tasks gptjax.eval.tasks loads, by name (train.eval_tasks entries are checked against them)
EVAL_TASKS = ("hellaswag", "mmlu", "lambada", "arc_easy", "arc_challenge", "piqa", "winogrande", "wikitext2")


class Resume(enum.Enum):
    """What a resumed run may do with a field's value; declared on the field, FIXED unless said otherwise."""

    FIXED = "fixed"  # a different value is an error: the checkpoint was trained under the saved one
    FREE = "free"  # cadence, logging, placement: a new value does not change what is being trained
    RECORDED = "recorded"  # optimizer settings: a new value is allowed and recorded in the run's history


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The finite numbers from `lo` to `hi` (either end open or absent), plus the sentinel values in `also`."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple[float, ...] = ()

    def admits(self, value: float) -> bool:
        if value in self.also:
            return True
        above_lo = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below_hi = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return math.isfinite(value) and above_lo and below_hi

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            span = f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            span = f"{'>' if self.lo_open else '>='} {self.lo}"
        elif self.hi is not None:
            span = f"{'<' if self.hi_open else '<='} {self.hi}"
        else:
            span = "a finite number"
        return " or ".join([*(str(v) for v in self.also), span])


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """A field's declared allowed values (a numeric range or a list of options) and its resume policy."""

    bounds: Bounds | None = None
    options: tuple[str, ...] | None = None
    resume: Resume = Resume.FIXED
    flag: str = ""  # the `gptjax prepare` flag that sets it, named in that command's errors


_SPEC_KEY = "gptjax"  # the dataclasses.field metadata key holding a FieldSpec


def _declared(default: Any, spec: FieldSpec) -> Any:
    return dataclasses.field(default=default, metadata={_SPEC_KEY: spec})


def bounded(default: float, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False, also: tuple[float, ...] = (), resume: Resume = Resume.FIXED, flag: str = "") -> Any:
    """A numeric field whose values must lie in `Bounds(lo, hi, lo_open, hi_open, also)`."""
    return _declared(default, FieldSpec(bounds=Bounds(lo, hi, lo_open, hi_open, also), resume=resume, flag=flag))


def choice(default: str, options: tuple[str, ...], *, resume: Resume = Resume.FIXED, flag: str = "") -> Any:
    """A string field that must be one of `options`."""
    return _declared(default, FieldSpec(options=options, resume=resume, flag=flag))


def setting(default: Any, *, resume: Resume) -> Any:
    """A field with no value range to check (a flag, a path, a name) but a resume policy other than FIXED."""
    return _declared(default, FieldSpec(resume=resume))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The decoder-only Transformer. Every variant is a setting of these fields."""

    vocab_size: int = bounded(0, lo=0)  # 0 = taken from the tokenizer when the data is prepared
    block_size: int = bounded(256, lo=1)
    n_layer: int = bounded(6, lo=1)
    n_head: int = bounded(6, lo=1)
    n_kv_head: int = bounded(0, lo=0)  # 0 = n_head (MHA); fewer = GQA; 1 = MQA
    d_model: int = bounded(384, lo=1)
    d_head: int = bounded(0, lo=0)  # width of one attention head; 0 = d_model / n_head (Gemma, Qwen3 decouple it)
    d_ff: int = bounded(0, lo=0)  # 0 = 4*d_model for gelu, ~8/3*d_model rounded up to a multiple of 64 for swiglu
    norm: str = choice("layernorm", NORMS)
    norm_placement: str = choice("pre", NORM_PLACEMENTS)
    norm_eps: float = bounded(1e-5, lo=0, lo_open=True)
    position: str = choice("learned", POSITIONS)
    max_positions: int = bounded(0, lo=0)  # learned/sinusoidal table length; 0 = block_size
    rope_theta: float = bounded(10000.0, lo=0, lo_open=True)
    # context extension of rope (global layers): positions / factor (linear), Llama 3's frequency bands, or YaRN
    rope_scaling: str = choice("none", ROPE_SCALINGS)
    rope_factor: float = bounded(1.0, lo=0, lo_open=True)
    rope_original_positions: int = bounded(0, lo=0)  # llama3 / yarn: the context the model was pretrained at
    rope_low_freq_factor: float = bounded(1.0, lo=0, lo_open=True)  # llama3
    rope_high_freq_factor: float = bounded(4.0, lo=0, lo_open=True)  # llama3
    rope_beta_fast: float = bounded(32.0, lo=0, lo_open=True)  # yarn
    rope_beta_slow: float = bounded(1.0, lo=0, lo_open=True)  # yarn
    rope_attention_factor: float = bounded(0.0, lo=0)  # yarn: cos/sin multiplier; 0 = 0.1·ln(factor) + 1
    rope_local_theta: float = bounded(0.0, lo=0)  # theta of the local ('L') layers, unscaled; 0 = rope_theta
    mlp: str = choice("gelu", MLPS)
    gelu_approximate: bool = True  # tanh GELU (GPT-2, HF "gelu_new"); False = exact erf GELU (nanoGPT, HF "gelu")
    attention: str = choice("dense", ATTENTION_PATTERNS)
    window: int = bounded(128, lo=1)  # local: each query sees the last `window` positions, itself included
    stride: int = bounded(64, lo=1)  # strided: block length; the last position of every block is a summary position
    # per-layer attention kinds, cycled over the layers: 'L' = local (`window`), 'G' = global (dense), e.g. "LLLLLG"
    # (Gemma 3) or "LG" (Gemma 2); "" = every layer follows `attention`
    layer_pattern: str = ""
    attention_impl: str = choice("xla", ATTENTION_IMPLS)
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys (Qwen3, Gemma 3, OLMo 2)
    attn_softcap: float = bounded(0.0, lo=0)  # > 0: attention logits -> cap·tanh(logits / cap) (Gemma 2)
    logit_softcap: float = bounded(0.0, lo=0)  # > 0: output logits -> cap·tanh(logits / cap) (Gemma 2)
    query_scale_dim: int = bounded(0, lo=0)  # scores scaled by query_scale_dim^-1/2 (Gemma); 0 = head dim
    embed_scale: bool = False  # embeddings multiplied by sqrt(d_model) (Gemma)
    norm_offset: bool = False  # norm gains stored as w, applied as 1 + w (Gemma)
    sandwich_norm: bool = False  # extra norms on the attention and MLP outputs before each residual add (Gemma 2/3)
    use_bias: bool = True
    qkv_bias: bool = False  # biases on the query/key/value projections only (Qwen2); use_bias=True puts them everywhere
    tie_embeddings: bool = True
    dropout: float = bounded(0.0, lo=0, hi=1, hi_open=True)
    init_std: float = bounded(0.02, lo=0, lo_open=True)
    parametrization: str = choice("sp", ("sp", "mup"))  # mup: maximal-update parametrization (gptjax.model.mup)
    mup_base_width: int = bounded(0, lo=0)  # mup: the d_model its multipliers are 1 at; 0 = d_model (mup = sp)
    vocab_multiple: int = bounded(128, lo=1)
    scan_layers: bool = False
    remat: str = choice("none", REMAT_POLICIES)
    dtype: str = choice("float32", DTYPES)  # compute dtype; params are float32, matmuls accumulate, the loss is float32
    num_classes: int = bounded(0, lo=0)  # > 0 adds a classifier head on the last real token's hidden state
    lora_rank: int = bounded(0, lo=0)  # > 0 adds LoRA adapters (x·A·B · alpha/rank) to the `lora_targets` matmuls
    lora_alpha: float = bounded(16.0, lo=0, lo_open=True)
    lora_targets: tuple[str, ...] = ("q", "v")  # of q, k, v, o (attention projections), mlp (every MLP matmul)
    lora_dropout: float = bounded(0.0, lo=0, hi=1, hi_open=True)  # dropout on the adapters' input (peft's)
    # mixture of experts (gptjax.model.moe): the MLP of the MoE layers becomes moe_experts routed experts
    moe_experts: int = bounded(0, lo=0)  # 0 = every layer keeps the dense MLP
    moe_top_k: int = bounded(2, lo=1)  # experts each token is routed to
    moe_d_ff: int = bounded(0, lo=0)  # hidden width of one expert (and of each shared expert); 0 = ff_dim
    # softmax_topk: softmax over all experts, then the top k (Mixtral, Qwen3-MoE); topk_softmax: softmax over the top k
    moe_router: str = choice("softmax_topk", MOE_ROUTERS)
    moe_renormalize: bool = True  # top-k weights rescaled to sum to 1 (Mixtral; Qwen3-MoE's norm_topk_prob)
    moe_shared_experts: int = bounded(0, lo=0)  # always-on experts of width moe_d_ff, summed in (DeepSeek)
    moe_first_dense: int = bounded(0, lo=0)  # the first k layers keep the dense MLP
    moe_every: int = bounded(1, lo=1)  # after those, every n-th layer is MoE (Qwen's decoder_sparse_step)
    moe_dispatch: str = choice("dropless", MOE_DISPATCHES)  # dropless: sorted tokens, ragged_dot; capacity: static
    moe_capacity_factor: float = bounded(1.25, lo=0, lo_open=True)  # capacity: slots per expert over tokens·k/E
    moe_aux_loss_weight: float = bounded(0.01, lo=0)  # Switch/GShard load-balancing loss, mean over MoE layers
    moe_z_loss_weight: float = bounded(0.001, lo=0)  # router z-loss mean(logsumexp(router logits)²) (ST-MoE)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_head

    def layer_kind(self, index: int) -> str:
        """'local' or 'global' under `layer_pattern`; else the kind every layer has ('local' under attention=local)."""
        if self.layer_pattern:
            return LAYER_KINDS[self.layer_pattern[index % len(self.layer_pattern)]]
        return "local" if self.attention == "local" else "global"

    def is_moe_layer(self, index: int) -> bool:
        """Whether layer `index` has a mixture of experts: the every-th, 2·every-th, ... layer after the first
        moe_first_dense dense ones (every layer with the defaults; Qwen's decoder_sparse_step counts alike)."""
        after_dense = index - self.moe_first_dense
        return self.moe_experts > 0 and after_dense >= 0 and (after_dense + 1) % self.moe_every == 0

    @property
    def moe_ff_dim(self) -> int:
        """Hidden width of one routed (or shared) expert."""
        return self.moe_d_ff or self.ff_dim

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model

    @property
    def padded_vocab(self) -> int:
        return self.vocab_multiple * math.ceil(self.vocab_size / self.vocab_multiple)

    @property
    def position_limit(self) -> int:
        """Longest sequence the position scheme can represent (a large number where there is no table)."""
        if self.position in ("learned", "sinusoidal"):
            return self.max_positions or self.block_size
        return 1 << 30


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """How `data.inputs` (and `gptjax prepare`) turn text files into token shards.

    Stages: read (`text_field`, `txt_mode`, `max_doc_bytes`) -> normalize -> language filter (off when `languages`
    is empty) -> Gopher quality rules -> dedup (`exact`, or `near` = exact then MinHash/LSH at `jaccard` over
    word `ngram`s, `bands` x num_perm//bands signature rows) -> boilerplate line/paragraph removal (units seen more
    than `boilerplate_max_count` times) -> split -> tokenizer (sentencepiece: trained on at most `sample_docs` train
    documents / `sample_bytes`) -> tokenize -> shards of at most `shard_tokens` tokens.

    The defaults are raw: every filter off and whole files as documents, so text is tokenized as it is (what
    data.inputs always did; such a config keeps its cache key). Turn filters on per field, e.g.
    `data.prepare.dedup="near"`, `data.prepare.languages=("en",)`, `data.prepare.quality=True`; the
    `gptjax prepare` command line starts from `normalize`, `quality` and near dedup on instead (`--raw` turns them
    off). `workers` and `tfds` change how the output is computed and exported, never its tokens.
    """

    text_field: str = "text"  # JSONL key / Parquet column holding the text
    # .txt: "file" = one document per file, "blank_lines" = one per paragraph
    txt_mode: str = choice("file", TXT_MODES, flag="--txt-mode")
    max_doc_bytes: int = bounded(1 << 30, lo=1)  # larger records are dropped and counted
    normalize: bool = False  # UTF-8 repair, newlines, NFC
    languages: tuple[str, ...] = ()  # ISO codes to keep; () = no language filter
    lang_threshold: float = bounded(0.5, lo=0, hi=1, flag="--lang-threshold")
    quality: bool = False  # Gopher quality and repetition rules
    dedup: str = choice("none", DEDUP_MODES, flag="--dedup")  # exact | near (= exact, then MinHash/LSH)
    # verified word-3-gram Jaccard of a near-duplicate pair: catches ~8% of words edited
    jaccard: float = bounded(0.5, lo=0, hi=1, flag="--jaccard")
    num_perm: int = bounded(120, lo=1, flag="--num-perm")
    bands: int = bounded(30, lo=1, flag="--bands")  # 30 bands x 4 rows: a pair at Jaccard 0.6 is a candidate w.p. 0.985
    ngram: int = bounded(3, lo=1, flag="--ngram")
    boilerplate: str = choice("none", BOILERPLATE_MODES, flag="--boilerplate")
    boilerplate_max_count: int = bounded(1, lo=1, flag="--boilerplate-max-count")
    model_type: str = choice("bpe", SENTENCEPIECE_MODEL_TYPES, flag="--model-type")  # sentencepiece
    byte_fallback: bool = True
    sample_docs: int = bounded(100_000, lo=1, flag="--sample-docs")
    sample_bytes: int = bounded(100 << 20, lo=1, flag="--sample-mb")
    # text per work chunk: the unit of parallelism and of resume
    chunk_bytes: int = bounded(16 << 20, lo=1, flag="--chunk-mb")
    shard_tokens: int = bounded(1 << 26, lo=1, flag="--shard-tokens")
    workers: int = bounded(1, lo=1, flag="--workers")  # worker processes
    tfds: bool = False  # also write a TFDS array_record copy


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the token data comes from. `path` is a prepared data dir; otherwise `dataset`/`inputs` are prepared
    on first use (with the `prepare` settings) into `cache_dir` and reused after."""

    dataset: str = "shakespeare_char"  # a bundled corpus name, or "" to use `path` or `inputs`
    path: str = ""
    inputs: tuple[str, ...] = ()
    tokenizer: str = choice("char", TOKENIZERS, flag="--tokenizer")
    tokenizer_dir: str = ""  # gpt2_bpe: directory with vocab.json and merges.txt
    vocab_size: int = bounded(0, lo=0, flag="--vocab-size")  # sentencepiece vocabulary size
    val_fraction: float = bounded(0.1, lo=0, hi=1, lo_open=True, hi_open=True)
    cache_dir: str = setting("", resume=Resume.FREE)  # "" = $GPTJAX_CACHE or ~/.cache/gptjax
    prefetch_threads: int = bounded(2, lo=0, resume=Resume.FREE)
    workers: int = bounded(0, lo=0)  # grain worker processes (0 = read in the training process)
    packing: bool = False  # pack whole documents into rows (segment ids + positions) instead of random windows
    mixture: tuple[str, ...] = ()  # "DATA_DIR:WEIGHT" entries: sample train rows from several prepared datasets
    # "STEP:NAME=WEIGHT,NAME=WEIGHT,..." entries, steps increasing: from STEP on the mixture's components (named by
    # the last part of their DATA_DIR, `mixture_names`; one a stage leaves out weighs 0) take these weights.
    # Resume: stages from the resumed step on may change (recorded); the weights of steps already trained may not
    # (checked by `check_trained_mixture`)
    mixture_stages: tuple[str, ...] = setting((), resume=Resume.RECORDED)
    prepare: PrepareConfig = PrepareConfig()  # how `inputs` are cleaned, deduplicated and sharded
    # gs:// data is read by byte ranges, never copied whole: the in-memory block cache of each reading process holds at
    # most this many GiB (divided among grain workers), and the next steps' windows are read this many steps ahead
    remote_cache_gb: float = bounded(2.0, lo=0, lo_open=True, resume=Resume.FREE)
    remote_readahead_steps: int = bounded(4, lo=0, resume=Resume.FREE)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, evaluation cadence, checkpointing and logging."""

    seed: int = bounded(0, lo=0, hi=2**32 - 1)
    objective: str = choice("lm", OBJECTIVES)  # the loss the trainer optimizes (gptjax.train.objectives)
    init_from: str = ""  # a run's workdir or an export: start from its params with a fresh optimizer
    batch_size: int = bounded(12, lo=1)  # global sequences per optimizer step
    grad_accum: int = bounded(1, lo=1)  # microbatches per step; batch_size must divide by it
    steps: int = bounded(2000, lo=0, resume=Resume.FREE)
    lr: float = bounded(1e-3, lo=0, lo_open=True, resume=Resume.RECORDED)
    min_lr: float = bounded(1e-4, lo=0, resume=Resume.RECORDED)
    warmup_steps: int = bounded(100, lo=0, resume=Resume.RECORDED)
    schedule: str = choice("cosine", SCHEDULES, resume=Resume.RECORDED)
    # cosine, linear: where the decay ends (0 = schedule horizon); wsd: length of the final decay (0 = horizon // 5)
    decay_steps: int = bounded(0, lo=0, resume=Resume.RECORDED)
    wsd_decay: str = choice("linear", WSD_DECAYS, resume=Resume.RECORDED)  # schedule=wsd: the final decay's shape
    # schedule=cosine_restarts: equal cycles over the horizon, each a warmup then a cosine to min_lr
    cycles: int = bounded(1, lo=1, resume=Resume.RECORDED)
    # LR schedule horizon; 0 = train.steps of the run that started (kept when resuming)
    schedule_steps: int = bounded(0, lo=0, resume=Resume.RECORDED)
    # the optimizer (gptjax.train.optim); its state is in the checkpoint, so a resumed run keeps it
    optimizer: str = choice("adamw", OPTIMIZERS)
    beta1: float = bounded(0.9, lo=0, hi=1, hi_open=True, resume=Resume.RECORDED)
    beta2: float = bounded(0.99, lo=0, hi=1, hi_open=True, resume=Resume.RECORDED)
    eps: float = bounded(1e-8, lo=0, lo_open=True, resume=Resume.RECORDED)
    # muon: the peak lr of the hidden matrices (the rest take train.lr), on train.lr's schedule
    muon_lr: float = bounded(0.02, lo=0, lo_open=True, resume=Resume.RECORDED)
    muon_momentum: float = bounded(0.95, lo=0, hi=1, hi_open=True, resume=Resume.RECORDED)  # Nesterov
    muon_ns_steps: int = bounded(5, lo=1, resume=Resume.RECORDED)  # Newton–Schulz iterations
    sgd_momentum: float = bounded(0.9, lo=0, hi=1, hi_open=True, resume=Resume.RECORDED)  # Nesterov
    # adafactor: factor the second moment of params whose second-largest dim is at least this
    adafactor_factor_min_dim: int = bounded(128, lo=1)
    weight_decay: float = bounded(0.1, lo=0, resume=Resume.RECORDED)
    grad_clip: float = bounded(1.0, lo=0, resume=Resume.RECORDED)  # 0 = off
    # skip an update whose loss exceeds this many times the running mean (0 = off)
    spike_factor: float = bounded(0.0, lo=1, lo_open=True, also=(0,), resume=Resume.RECORDED)
    # an exponential moving average of the weights, this much of the old average kept per step (0 = off); kept in
    # the state and checkpoint and evaluated beside the weights (val_loss_ema)
    ema_decay: float = bounded(0.0, lo=0, hi=1, hi_open=True, resume=Resume.RECORDED)
    z_loss: float = bounded(0.0, lo=0, resume=Resume.RECORDED)
    eval_every: int = bounded(250, lo=1, resume=Resume.FREE)
    eval_batches: int = bounded(20, lo=1, resume=Resume.FREE)
    # downstream tasks scored every eval_every steps beside the val loss, "TASK[:LIMIT]" (gptjax.eval.tasks)
    eval_tasks: tuple[str, ...] = setting((), resume=Resume.FREE)
    eval_data: str = setting("", resume=Resume.FREE)  # the eval tasks' data dir ("" = $GPTJAX_EVAL_DATA)
    log_every: int = bounded(10, lo=1, resume=Resume.FREE)
    checkpoint_every: int = bounded(500, lo=1, resume=Resume.FREE)
    keep_checkpoints: int = bounded(3, lo=1, resume=Resume.FREE)
    # per device, for MFU; 0 = from a table of known devices
    peak_flops: float = bounded(0.0, lo=0, resume=Resume.FREE)
    tensorboard: bool = setting(True, resume=Resume.FREE)
    # "" = $GPTJAX_CACHE/jax or ~/.cache/gptjax/jax; "off" disables
    compilation_cache: str = setting("", resume=Resume.FREE)
    # CPU only: XLA devices to split the host into (0 = one per core that divides the batch)
    cpu_devices: int = bounded(0, lo=0, resume=Resume.FREE)
    # instruments (gptjax.train.stats, profile, tracker): per-module RMS of params, gradients and updates and the
    # attention-logit max every this many steps (0 = off)
    stats_every: int = bounded(0, lo=0, resume=Resume.FREE)
    # "START:N": a jax.profiler trace of steps START..START+N-1 (1-based) in <workdir>/profile/ ("" = off)
    profile_steps: str = setting("", resume=Resume.FREE)
    # a Weights & Biases project to log the metrics to ("" = off); the run's id is kept in <workdir>/wandb_id.txt
    wandb_project: str = setting("", resume=Resume.FREE)
    wandb_group: str = setting("", resume=Resume.FREE)
    wandb_name: str = setting("", resume=Resume.FREE)  # "" = the workdir's name


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """What a finetuning objective (train.objective = classify | sft | dpo) reads and how.

    Records come from `data` (a file or a directory laid out as shared/data: sms_spam/, instruction/); `task` says
    how to read and split them: sms_spam (class-balanced 747 + 747, 70/10/20 as rasbt's ch06), instruction
    (Alpaca records, 85/5/10 as ch07), preference (instruction + chosen/rejected, 85/5/10), classification (JSONL
    records with `text` and `label`, 70/10/20). The base model is train.init_from."""

    task: str = choice("sms_spam", FINETUNE_TASKS)
    data: str = ""  # records file or directory; "" = $GPTJAX_EVAL_DATA (a folder laid out as shared/data)
    # which params train: none (all) | all (only new heads) | last_n_blocks:N (+ final norm, heads) | lora (adapters)
    freeze: str = "none"
    labels: tuple[str, ...] = ()  # class names in label order; () = sorted labels found in the records
    # SFT/DPO prompt format; chat = gptjax's role tokens added to the vocab; hf_chat = the base tokenizer's own template
    template: str = choice("alpaca", TEMPLATES)
    too_long: str = choice("truncate", ("truncate", "skip"))  # records longer than model.block_size
    pack: bool = False  # SFT: pack several records per row (segment ids) instead of one padded record per row
    beta: float = bounded(0.1, lo=0, lo_open=True, resume=Resume.RECORDED)  # DPO
    label_smoothing: float = bounded(0.0, lo=0, hi=0.5, hi_open=True, resume=Resume.RECORDED)  # DPO (cDPO)
    reference: str = choice("precomputed", ("precomputed", "live"))  # DPO: reference log-probs stored or recomputed
    # SFT/DPO: held-out prompts answered into the workdir at the end
    samples: int = bounded(8, lo=0, resume=Resume.FREE)
    max_new_tokens: int = bounded(64, lo=1, resume=Resume.FREE)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; -1 means: all devices not used by the other axes."""

    data: int = bounded(-1, lo=1, also=(-1,), resume=Resume.FREE)
    fsdp: int = bounded(1, lo=1, also=(-1,), resume=Resume.FREE)
    tensor: int = bounded(1, lo=1, also=(-1,), resume=Resume.FREE)


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = setting("unnamed", resume=Resume.FREE)
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    finetune: FinetuneConfig = FinetuneConfig()


def _to_configdict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return ml_collections.ConfigDict(
            {f.name: _to_configdict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        )
    return obj


def _locked_configdict(cfg: Config) -> ml_collections.ConfigDict:
    cd = _to_configdict(cfg)
    cd.lock()
    return cd


def base_config() -> ml_collections.ConfigDict:
    """Every field with its default, type-locked: experiment files change fields, never add them."""
    return _locked_configdict(Config())


def _build(cls: type, values: dict, where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise GptjaxError(f"unknown config key '{where}{unknown[0]}'; known keys there: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise GptjaxError(f"config key '{where}{name}' must be a section, got {value!r}")
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = getattr(hint, "__origin__", hint)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise GptjaxError(f"config key '{key}' expects a list, got {value!r}")
        return tuple(str(v) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise GptjaxError(f"config key '{key}' expects true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise GptjaxError(f"config key '{key}' expects an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GptjaxError(f"config key '{key}' expects a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise GptjaxError(f"config key '{key}' expects a string, got {value!r}")
        return value
    raise GptjaxError(f"config key '{key}' has an unsupported type {hint}")


def from_dict(values: dict) -> Config:
    """A validated Config from a plain nested dict (a JSON checkpoint record or a ConfigDict's to_dict())."""
    cfg = _build(Config, values, "")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def load_experiment(path: str | Path) -> ml_collections.ConfigDict:
    """The type-locked ConfigDict of an experiment file's `get_config()` or of a run's saved `config.json`.

    Any error in the file becomes one GptjaxError naming it (and the line, for an experiment file)."""
    path = Path(path)
    if not path.is_file():
        raise GptjaxError(f"config file not found: {path} (pass --config experiments/NAME.py or RUN/config.json)")
    if path.suffix == ".json":
        return _load_saved_config(path)
    spec = importlib.util.spec_from_file_location(f"gptjax_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise GptjaxError(f"{path} defines no get_config(); an experiment file's get_config() returns "
                              f"gptjax.config.base_config() with fields changed")
        cd = module.get_config()
    except GptjaxError:
        raise
    except Exception as e:
        raise GptjaxError(failure_in_file(path, e)) from e
    if not isinstance(cd, ml_collections.ConfigDict):
        raise GptjaxError(f"{path}: get_config() must return an ml_collections.ConfigDict "
                          f"(start from gptjax.config.base_config())")
    return cd


def _load_saved_config(path: Path) -> ml_collections.ConfigDict:
    """The defaults with a saved config's values applied: unknown keys are errors, missing keys keep defaults."""
    fix = "pass a run's config.json or an experiment file experiments/NAME.py"
    values = read_json(path, "saved config", fix)
    if not isinstance(values, dict):
        raise GptjaxError(f"{path} is not a saved config (a JSON object of config sections); {fix}")
    try:
        return _locked_configdict(_build(Config, values, ""))
    except GptjaxError as e:
        raise GptjaxError(f"{path}: {e}") from None


# ml_collections lists every field of the section after a locked-key error; the "Did you mean" part says enough.
_LOCKED_FIELDS_DUMP = re.compile(r'\s*Other fields present: "\{.*?\}"', re.DOTALL)


def failure_in_file(path: Path, error: Exception) -> str:
    """'FILE:LINE: Type: message' on one line, LINE being the innermost line of `path` the error passed through."""
    in_file = Path(path).resolve()
    if isinstance(error, SyntaxError) and error.filename and Path(error.filename).resolve() == in_file:
        line, message = error.lineno, error.msg
    else:
        lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == in_file]
        line, message = (lines[-1] if lines else None), _plain_message(error)
    message = " ".join(_LOCKED_FIELDS_DUMP.sub("", message).split())
    where = f"{path}:{line}" if line else f"{path}"
    return f"{where}: {type(error).__name__}: {message}"


def _plain_message(error: BaseException) -> str:
    """An exception's text; a KeyError's without the repr quotes, also when wrapped (ml_collections wraps it)."""
    while len(error.args) == 1 and isinstance(error.args[0], BaseException):
        error = error.args[0]
    return str(error.args[0]) if isinstance(error, KeyError) and len(error.args) == 1 else str(error)


def _parse_scalar(text: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise GptjaxError(f"config key '{key}' expects true/false, got '{text}'")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise GptjaxError(f"config key '{key}' expects an integer, got '{text}'") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise GptjaxError(f"config key '{key}' expects a number, got '{text}'") from None
    if isinstance(current, (tuple, list)):
        return tuple(v for v in text.split(",") if v)
    return text


def apply_overrides(cd: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies `section.key=value` overrides (from `--config.section.key=value`), typed by the current value."""
    for item in overrides:
        if "=" not in item:
            raise GptjaxError(f"override '--config.{item}' needs a value: --config.{item}=VALUE")
        dotted, text = item.split("=", 1)
        *parents, leaf = dotted.split(".")
        node = cd
        for part in parents:
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise GptjaxError(f"unknown config key '{dotted}' (from --config.{item})")
            node = node[part]
        if (not isinstance(node, ml_collections.ConfigDict) or leaf not in node
                or isinstance(node[leaf], ml_collections.ConfigDict)):
            known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
            raise GptjaxError(f"unknown config key '{dotted}' (from --config.{item}); known keys there: {known}")
        with node.unlocked():
            node[leaf] = _parse_scalar(text, node[leaf], dotted)
    return cd


def to_config(cd: ml_collections.ConfigDict) -> Config:
    return from_dict(cd.to_dict())



class Leaf(NamedTuple):
    """A config field that is not a section: its dotted key, its value and its declaration."""

    key: str
    value: Any
    spec: FieldSpec


def field_spec(field: dataclasses.Field) -> FieldSpec:
    """What `field` declares (nothing: any value, fixed on resume)."""
    return field.metadata.get(_SPEC_KEY) or FieldSpec()


def leaf_fields(section: Any = Config(), prefix: str = "") -> list[Leaf]:
    """Every field below `section` (a Config or one of its sections), depth first, in declaration order."""
    leaves = []
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if dataclasses.is_dataclass(value):
            leaves += leaf_fields(value, f"{prefix}{field.name}.")
        else:
            leaves.append(Leaf(f"{prefix}{field.name}", value, field_spec(field)))
    return leaves


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise GptjaxError(f"invalid config: {message}")


def declared_violation(leaf: Leaf, name_flag: bool = False) -> str | None:
    """How `leaf`'s value breaks its declaration ("KEY=VALUE must be ..."), None if it does not; `name_flag` adds
    the `gptjax prepare` flag that sets it."""
    key, value, spec = leaf
    named = f"{key}={value!r}" + (f" ({spec.flag})" if name_flag and spec.flag else "")
    if spec.options is not None and value not in spec.options:
        return f"{named} is not one of {', '.join(spec.options)}"
    if spec.bounds is not None and not spec.bounds.admits(value):
        return f"{named} must be {spec.bounds}"
    return None


def _check_declared(leaf: Leaf) -> None:
    problem = declared_violation(leaf)
    _check(problem is None, f"{problem} (set --config.{leaf.key}=VALUE or change it in the experiment file)")


def validate(cfg: Config) -> None:
    """Every field's declared values, then the rules that relate fields; raises GptjaxError at the first violation."""
    for leaf in leaf_fields(cfg):
        _check_declared(leaf)
    m, t = cfg.model, cfg.train
    _check(m.d_head > 0 or m.d_model % m.n_head == 0,
           f"model.d_model={m.d_model} must be divisible by model.n_head={m.n_head} (or set model.d_head)")
    bad_letters = sorted(set(m.layer_pattern) - set(LAYER_KINDS))
    _check(not bad_letters, f"model.layer_pattern='{m.layer_pattern}' has {', '.join(map(repr, bad_letters))}; use the "
                            f"letters L (local, model.window) and G (global)")
    _check(not m.layer_pattern or m.attention == "dense",
           f"model.layer_pattern='{m.layer_pattern}' sets each layer's kind; it needs model.attention='dense', "
           f"got '{m.attention}'")
    _check(m.rope_scaling == "none" or m.position == "rope",
           f"model.rope_scaling='{m.rope_scaling}' needs model.position='rope', got '{m.position}'")
    _check(m.rope_scaling not in ("llama3", "yarn") or m.rope_original_positions > 0,
           f"model.rope_scaling='{m.rope_scaling}' needs model.rope_original_positions (the pretraining context)")
    _check(m.rope_scaling != "llama3" or m.rope_high_freq_factor > m.rope_low_freq_factor,
           f"model.rope_high_freq_factor={m.rope_high_freq_factor} must be above model.rope_low_freq_factor="
           f"{m.rope_low_freq_factor}")
    _check(m.n_head % m.kv_heads == 0, f"model.n_head={m.n_head} must be divisible by model.n_kv_head={m.kv_heads}")
    _check(m.position != "rope" or m.head_dim % 2 == 0,
           f"position='rope' needs an even head dim (model.d_head or d_model / n_head), got {m.head_dim}")
    _check(m.block_size <= m.position_limit,
           f"model.block_size={m.block_size} is above the position limit {m.position_limit} of "
           f"position='{m.position}' (raise model.max_positions or lower block_size)")
    _check(t.batch_size % t.grad_accum == 0,
           f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")
    _check(t.min_lr <= t.lr, f"train.min_lr={t.min_lr} must be <= train.lr={t.lr}")
    _check_optimizer_and_schedule(t)
    unknown_targets = [x for x in m.lora_targets if x not in LORA_TARGETS]
    _check(not unknown_targets, f"model.lora_targets has {', '.join(unknown_targets)}, not among the LoRA targets "
                                f"{', '.join(LORA_TARGETS)}")
    _check(m.lora_rank == 0 or m.lora_targets, "model.lora_rank > 0 needs at least one of model.lora_targets")
    _check_moe(m, cfg.mesh)
    _check_finetune(cfg)
    eval_task_specs(cfg.train.eval_tasks)
    mixture_schedule(cfg.data.mixture, cfg.data.mixture_stages)


def _check_moe(m: ModelConfig, mesh: MeshConfig) -> None:
    """The rules a mixture-of-experts config must keep (nothing to check without experts)."""
    if m.moe_experts == 0:
        return
    _check(m.moe_top_k <= m.moe_experts,
           f"model.moe_top_k={m.moe_top_k} must be <= model.moe_experts={m.moe_experts} (each token picks distinct "
           f"experts)")
    _check(any(m.is_moe_layer(i) for i in range(m.n_layer)),
           f"model.moe_first_dense={m.moe_first_dense} and model.moe_every={m.moe_every} leave no MoE layer among "
           f"model.n_layer={m.n_layer}; lower them or set model.moe_experts=0")
    _check(not m.scan_layers or (m.moe_first_dense == 0 and m.moe_every == 1),
           f"model.scan_layers=True needs every layer alike, but model.moe_first_dense={m.moe_first_dense} / "
           f"model.moe_every={m.moe_every} mix dense and MoE layers; set them to 0 / 1 or model.scan_layers=False")
    _check(m.lora_rank == 0 or "mlp" not in m.lora_targets,
           "model.lora_targets='mlp' has no adapters for expert MLPs (model.moe_experts > 0); target the attention "
           "projections (q, k, v, o) instead")
    if mesh.fsdp > 0:
        check_experts_divide(m, mesh.fsdp)


def check_experts_divide(m: ModelConfig, fsdp: int) -> None:
    """Experts are sharded over the fsdp mesh axis (expert parallelism): each device must hold whole experts."""
    _check(m.moe_experts % fsdp == 0,
           f"model.moe_experts={m.moe_experts} is not divisible by the expert mesh axis mesh.fsdp={fsdp} (experts "
           f"are sharded over fsdp); choose a mesh.fsdp that divides it")


def _check_optimizer_and_schedule(t: TrainConfig) -> None:
    """Settings of another optimizer or schedule than the chosen one, and what a schedule needs."""
    defaults = TrainConfig()
    for name, optimizers in OPTIMIZER_SETTINGS.items():
        value = getattr(t, name)
        _check(t.optimizer in optimizers or value == getattr(defaults, name),
               f"train.{name}={value} is a setting of train.optimizer={' or '.join(optimizers)}, not of "
               f"train.optimizer={t.optimizer} (remove it or choose one of those optimizers)")
    for name, schedule in (("wsd_decay", "wsd"), ("cycles", "cosine_restarts")):
        value = getattr(t, name)
        _check(t.schedule == schedule or value == getattr(defaults, name),
               f"train.{name}={value} is a setting of train.schedule={schedule}, not of train.schedule={t.schedule} "
               f"(remove it or set train.schedule={schedule})")
    _check(t.schedule != "inverse_sqrt" or t.warmup_steps >= 1,
           "train.schedule=inverse_sqrt needs train.warmup_steps >= 1 (after the warmup the lr is "
           "lr·sqrt(warmup_steps/step))")


def eval_task_specs(entries: tuple[str, ...]) -> list[tuple[str, int | None]]:
    """("hellaswag", 200) pairs from `train.eval_tasks` entries "TASK[:LIMIT]", each name one of EVAL_TASKS."""
    specs = []
    for entry in entries:
        name, _, limit = entry.partition(":")
        name = name.strip()
        _check(name in EVAL_TASKS, f"train.eval_tasks entry {entry!r}: unknown task {name!r}; known tasks: "
                                   f"{', '.join(EVAL_TASKS)}")
        _check(not limit or (limit.isdigit() and int(limit) > 0),
               f"train.eval_tasks entry {entry!r}: LIMIT must be a positive integer (TASK or TASK:LIMIT)")
        specs.append((name, int(limit) if limit else None))
    return specs


class MixtureStage(NamedTuple):
    """From step `start` on, a step's rows come from `data.mixture`'s components in proportion to `weights`."""

    start: int
    weights: tuple[float, ...]


def mixture_entry(entry: str) -> tuple[str, float]:
    """(DATA_DIR, weight) of a `data.mixture` entry "DATA_DIR:WEIGHT" (the last colon splits, so gs:// URLs work)."""
    path, sep, weight = entry.rpartition(":")
    if not (sep and path and _is_weight(weight) and float(weight) > 0):
        raise GptjaxError(f"data.mixture entry {entry!r} must be DATA_DIR:WEIGHT with a positive weight")
    return path, float(weight)


def _is_weight(text: str) -> bool:
    """Whether `text` is a finite number >= 0."""
    try:
        return math.isfinite(float(text)) and float(text) >= 0
    except ValueError:
        return False


def mixture_names(mixture: tuple[str, ...] | list[str]) -> list[str]:
    """Each `data.mixture` component's name, which per-domain metrics and stages use: the last part of its DATA_DIR
    ("web" for /data/web), or as many last parts as tell it from the others ("a/out" beside "b/out")."""
    parts = [mixture_entry(entry)[0].rstrip("/").split("/") for entry in mixture]

    def shortest_unique(i: int) -> str:
        for depth in range(1, len(parts[i]) + 1):
            name = "/".join(parts[i][-depth:])
            if all("/".join(other[-depth:]) != name for j, other in enumerate(parts) if j != i):
                return name
        return "/".join(parts[i])

    names = [shortest_unique(i) for i in range(len(parts))]
    repeated = sorted({name for name in names if names.count(name) > 1})
    _check(not repeated, f"data.mixture lists {', '.join(repeated)} more than once; list each DATA_DIR once")
    return names


def mixture_schedule(mixture: tuple[str, ...] | list[str],
                     stages: tuple[str, ...] | list[str] = ()) -> tuple[MixtureStage, ...]:
    """The mixture weights by step: `data.mixture`'s from step 0, then each `data.mixture_stages` entry's from its
    STEP on, checked (steps increasing, names of components, weights >= 0 and not all 0)."""
    _check(not stages or mixture, "data.mixture_stages needs data.mixture (its components and their first weights)")
    names = mixture_names(mixture)
    schedule = [MixtureStage(0, tuple(mixture_entry(entry)[1] for entry in mixture))]
    for entry in _stage_entries(stages):
        schedule.append(_mixture_stage(entry, names, schedule[-1].start))
    return tuple(schedule)


def _stage_entries(stages: tuple[str, ...] | list[str]) -> list[str]:
    """One "STEP:NAME=WEIGHT,..." string per stage. A command-line override splits a list at every comma, so an item
    without "STEP:" continues the stage before it (`--config.data.mixture_stages=90:web=0.3,code=0.7` is one stage)."""
    entries: list[str] = []
    for item in ",".join(stages).split(",") if stages else []:
        if ":" in item or not entries:
            entries.append(item)
        else:
            entries[-1] += "," + item
    return entries


def _mixture_stage(entry: str, names: list[str], previous_start: int) -> MixtureStage:
    where = f"data.mixture_stages entry {entry!r}"
    step, sep, listing = entry.partition(":")
    _check(bool(sep) and step.strip().isdigit(), f"{where} must be STEP:NAME=WEIGHT,NAME=WEIGHT,...")
    start = int(step)
    _check(start > previous_start, f"{where}: stage steps must be above 0 (data.mixture's weights hold from step 0) "
                                   f"and increase; got step {start} after step {previous_start}")
    weights = dict.fromkeys(names, 0.0)
    for item in listing.split(","):
        name, _, weight = (part.strip() for part in item.partition("="))
        _check(name in weights, f"{where}: {name!r} is not a data.mixture component; they are {', '.join(names)}")
        _check(_is_weight(weight), f"{where}: the weight of {name} must be a number >= 0, got {weight!r}")
        weights[name] = float(weight)
    _check(sum(weights.values()) > 0, f"{where}: the weights are all 0")
    return MixtureStage(start, tuple(weights.values()))


def check_trained_mixture(saved_data: dict, data: DataConfig, step: int) -> None:
    """Refuses a resumed run's `data.mixture_stages` that change the weights of a step before `step` (trained)."""
    if not data.mixture:
        return
    saved = mixture_schedule(saved_data.get("mixture", ()), saved_data.get("mixture_stages", ()))
    current = mixture_schedule(data.mixture, data.mixture_stages)
    if [stage for stage in saved if stage.start < step] != [stage for stage in current if stage.start < step]:
        raise GptjaxError(f"data.mixture_stages changes the mixture weights of steps before {step}, which the "
                          f"checkpoint was already trained on (saved {list(saved_data.get('mixture_stages', ()))}); "
                          f"keep the stages before step {step} and change only later ones, or use a new --workdir")


def freeze_policy(freeze: str) -> tuple[str, int]:
    """("none" | "all" | "lora", 0) or ("last_n_blocks", N) from `finetune.freeze`."""
    kind, _, count = freeze.partition(":")
    if kind in ("none", "all", "lora") and not count:
        return kind, 0
    if kind == "last_n_blocks" and count.isdigit() and int(count) > 0:
        return kind, int(count)
    raise GptjaxError(f"invalid config: finetune.freeze={freeze!r} is not none, all, last_n_blocks:N or lora")


def _check_finetune(cfg: Config) -> None:
    m, t, f = cfg.model, cfg.train, cfg.finetune
    kind, blocks = freeze_policy(f.freeze)
    _check(blocks <= m.n_layer, f"finetune.freeze={f.freeze} names more blocks than model.n_layer={m.n_layer}")
    _check(kind != "last_n_blocks" or not m.scan_layers,
           "finetune.freeze=last_n_blocks:N needs model.scan_layers=False (scanned layers share one param per kind)")
    _check((kind == "lora") == (m.lora_rank > 0),
           f"finetune.freeze='lora' and model.lora_rank > 0 go together (got freeze={f.freeze!r}, "
           f"lora_rank={m.lora_rank})")
    _check(kind != "all" or m.num_classes > 0, "finetune.freeze='all' trains only new heads, and this model has none "
                                               "(model.num_classes=0); use lora or last_n_blocks:N")
    _check((t.objective == "classify") == (m.num_classes > 0),
           f"train.objective='classify' and model.num_classes > 0 go together (got objective={t.objective!r}, "
           f"num_classes={m.num_classes})")
    _check(t.objective in FINETUNE_OBJECTIVES or kind == "none",
           f"finetune.freeze={f.freeze!r} applies to finetuning objectives ({', '.join(FINETUNE_OBJECTIVES)}), not "
           f"train.objective={t.objective!r}")
    _check(t.objective not in FINETUNE_OBJECTIVES or bool(t.init_from),
           f"train.objective='{t.objective}' finetunes a trained model: set train.init_from=RUN_OR_EXPORT"
           + (" (the DPO reference is that model)" if t.objective == "dpo" else ""))
    _check(not f.labels or len(set(f.labels)) == len(f.labels) >= 2,
           f"finetune.labels={list(f.labels)} must name at least two distinct classes")
    _check(not f.labels or len(f.labels) == m.num_classes,
           f"finetune.labels names {len(f.labels)} classes but model.num_classes={m.num_classes}")


class Change(NamedTuple):
    """A field whose value differs between a checkpoint's saved config and the resuming run's."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


@dataclasses.dataclass(frozen=True)
class ResumeChanges:
    """The changes a resume makes, sorted by the fields' `Resume` policy (FREE changes are not listed)."""

    recorded: list[Change]  # allowed; the training loop records them in the run's history
    forbidden: list[Change]  # the resume must be refused


def flatten_config(values: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to values, tuples as lists, so a config compares equal to its JSON round trip."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def resume_policies() -> dict[str, Resume]:
    """The declared `Resume` policy of every dotted key."""
    return {leaf.key: leaf.spec.resume for leaf in leaf_fields(Config())}


def resume_changes(saved: dict, current: dict) -> ResumeChanges:
    """What resuming a checkpoint saved under `saved` with the config `current` changes (both nested dicts, as
    `to_dict` or its JSON). A key an older saved config lacks counts as its default; a key today's fields lack
    counts as FIXED."""
    defaults = flatten_config(to_dict(Config()))
    old, new = {**defaults, **flatten_config(saved)}, {**defaults, **flatten_config(current)}
    policies = resume_policies()
    changes = [Change(key, old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
               if old.get(key) != new.get(key)]
    return ResumeChanges(recorded=[c for c in changes if policies.get(c.key) is Resume.RECORDED],
                         forbidden=[c for c in changes if policies.get(c.key, Resume.FIXED) is Resume.FIXED])
