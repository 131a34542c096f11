"""Run configuration: frozen dataclasses, built from ml_collections experiment files, validated in one place.

An experiment file (`experiments/X.py`) defines `get_config()` returning `base_config()` with fields changed.
The base ConfigDict is type-locked, so a misspelt key or a wrong value type fails on assignment; `--config.a.b=v`
command-line overrides go through the same checks. `to_config` turns the result into an immutable `Config`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path
from typing import Any, get_type_hints

import ml_collections

from gptjax.errors import GptjaxError

NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
MLPS = ("gelu", "swiglu")
ATTENTION_PATTERNS = ("dense", "local", "strided")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "save_dots", "save_attn_out")
DTYPES = ("float32", "bfloat16", "float16")
SCHEDULES = ("cosine", "wsd", "constant")
TOKENIZERS = ("char", "sentencepiece", "gpt2_bpe")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The decoder-only Transformer. Every variant is a setting of these fields."""

    vocab_size: int = 0  # 0 = taken from the tokenizer when the data is prepared
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 0  # 0 = n_head (MHA); fewer = GQA; 1 = MQA
    d_model: int = 384
    d_ff: int = 0  # 0 = 4*d_model for gelu, ~8/3*d_model rounded up to a multiple of 64 for swiglu
    norm: str = "layernorm"
    norm_placement: str = "pre"
    norm_eps: float = 1e-5
    position: str = "learned"
    max_positions: int = 0  # learned/sinusoidal table length; 0 = block_size
    rope_theta: float = 10000.0
    mlp: str = "gelu"
    gelu_approximate: bool = True  # tanh GELU (GPT-2, HF "gelu_new"); False = exact erf GELU (nanoGPT, HF "gelu")
    attention: str = "dense"
    window: int = 128  # local: each query sees the last `window` positions, itself included
    stride: int = 64  # strided: block length; the last position of every block is a summary position
    attention_impl: str = "xla"
    use_bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    vocab_multiple: int = 128
    scan_layers: bool = False
    remat: str = "none"
    dtype: str = "float32"  # compute dtype; params are float32, matmuls accumulate and the loss runs in float32

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

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
class DataConfig:
    """Where the token data comes from. `path` is a prepared data dir; otherwise `dataset`/`inputs` are prepared
    on first use into `cache_dir` and reused after."""

    dataset: str = "shakespeare_char"  # a bundled corpus name, or "" to use `path` or `inputs`
    path: str = ""
    inputs: tuple[str, ...] = ()
    tokenizer: str = "char"
    tokenizer_dir: str = ""  # gpt2_bpe: directory with vocab.json and merges.txt
    vocab_size: int = 0  # sentencepiece vocabulary size
    val_fraction: float = 0.1
    cache_dir: str = ""  # "" = $GPTJAX_CACHE or ~/.cache/gptjax
    prefetch_threads: int = 2
    workers: int = 0  # grain worker processes (0 = read in the training process)
    packing: bool = False  # pack whole documents into rows (segment ids + positions) instead of random windows
    mixture: tuple[str, ...] = ()  # "DATA_DIR:WEIGHT" entries: sample train rows from several prepared datasets


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, evaluation cadence, checkpointing and logging."""

    seed: int = 0
    objective: str = "lm"  # the loss the trainer optimizes (gptjax.train.objectives): lm = next-token prediction
    init_from: str = ""  # a run's workdir or an export: start from its params with a fresh optimizer
    batch_size: int = 12  # global sequences per optimizer step
    grad_accum: int = 1  # microbatches per step; batch_size must divide by it
    steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "cosine"
    decay_steps: int = 0  # cosine: 0 = schedule horizon; wsd: length of the final linear decay (0 = horizon // 5)
    schedule_steps: int = 0  # LR schedule horizon; 0 = train.steps of the run that started (kept when resuming)
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 = off
    spike_factor: float = 0.0  # skip an update whose loss exceeds this many times the running mean (0 = off)
    z_loss: float = 0.0
    eval_every: int = 250
    eval_batches: int = 20
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    peak_flops: float = 0.0  # per device, for MFU; 0 = from a table of known devices
    tensorboard: bool = True
    compilation_cache: str = ""  # "" = $GPTJAX_CACHE/jax or ~/.cache/gptjax/jax; "off" disables
    cpu_devices: int = 0  # CPU only: XLA devices to split the host into (0 = one per core that divides the batch)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; -1 means: all devices not used by the other axes."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "unnamed"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()


def _to_configdict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return ml_collections.ConfigDict({f.name: _to_configdict(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj


def base_config() -> ml_collections.ConfigDict:
    """Every field with its default, type-locked: experiment files change fields, never add them."""
    cd = _to_configdict(Config())
    cd.lock()
    return cd


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
    """Runs an experiment file's `get_config()`; any error in it becomes one GptjaxError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise GptjaxError(f"config file not found: {path} (pass --config experiments/NAME.py)")
    spec = importlib.util.spec_from_file_location(f"gptjax_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        cd = module.get_config()
    except GptjaxError:
        raise
    except (AttributeError, KeyError, TypeError) as e:
        raise GptjaxError(f"{path}: {type(e).__name__}: {e}") from e
    if not isinstance(cd, ml_collections.ConfigDict):
        raise GptjaxError(f"{path}: get_config() must return an ml_collections.ConfigDict (start from gptjax.config.base_config())")
    return cd


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
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
            known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
            raise GptjaxError(f"unknown config key '{dotted}' (from --config.{item}); known keys there: {known}")
        with node.unlocked():
            node[leaf] = _parse_scalar(text, node[leaf], dotted)
    return cd


def to_config(cd: ml_collections.ConfigDict) -> Config:
    return from_dict(cd.to_dict())


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise GptjaxError(f"invalid config: {message}")


def _check_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    _check(value in choices, f"{key}='{value}' is not one of {', '.join(choices)}")


def validate(cfg: Config) -> None:
    """Every cross-field rule in one place; raises GptjaxError with the first violated rule."""
    m, t, d = cfg.model, cfg.train, cfg.data
    _check_choice(m.norm, NORMS, "model.norm")
    _check_choice(m.norm_placement, NORM_PLACEMENTS, "model.norm_placement")
    _check_choice(m.position, POSITIONS, "model.position")
    _check_choice(m.mlp, MLPS, "model.mlp")
    _check_choice(m.attention, ATTENTION_PATTERNS, "model.attention")
    _check_choice(m.attention_impl, ATTENTION_IMPLS, "model.attention_impl")
    _check_choice(m.remat, REMAT_POLICIES, "model.remat")
    _check_choice(m.dtype, DTYPES, "model.dtype")
    _check_choice(t.schedule, SCHEDULES, "train.schedule")
    _check_choice(d.tokenizer, TOKENIZERS, "data.tokenizer")
    for key in ("block_size", "n_layer", "n_head", "d_model", "vocab_multiple", "window", "stride"):
        _check(getattr(m, key) >= 1, f"model.{key} must be >= 1, got {getattr(m, key)}")
    _check(m.vocab_size >= 0 and m.n_kv_head >= 0 and m.d_ff >= 0, "model.vocab_size, n_kv_head and d_ff must be >= 0")
    _check(m.d_model % m.n_head == 0, f"model.d_model={m.d_model} must be divisible by model.n_head={m.n_head}")
    _check(m.n_head % m.kv_heads == 0, f"model.n_head={m.n_head} must be divisible by model.n_kv_head={m.kv_heads}")
    _check(m.position != "rope" or m.head_dim % 2 == 0, f"rope needs an even head dim, got {m.head_dim}")
    _check(m.rope_theta > 0 and m.norm_eps > 0 and m.init_std > 0, "model.rope_theta, norm_eps and init_std must be > 0")
    _check(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
    _check(m.block_size <= m.position_limit,
           f"model.block_size={m.block_size} is above the position limit {m.position_limit} of "
           f"position='{m.position}' (raise model.max_positions or lower block_size)")
    _check(t.batch_size >= 1 and t.grad_accum >= 1 and t.steps >= 0, "train.batch_size, grad_accum must be >= 1, steps >= 0")
    _check(t.batch_size % t.grad_accum == 0,
           f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")
    _check(t.lr > 0 and 0 <= t.min_lr <= t.lr, f"need 0 <= train.min_lr <= train.lr and lr > 0 (lr={t.lr}, min_lr={t.min_lr})")
    _check(t.warmup_steps >= 0 and t.decay_steps >= 0, "train.warmup_steps and decay_steps must be >= 0")
    _check(t.eval_every >= 1 and t.log_every >= 1 and t.checkpoint_every >= 1 and t.keep_checkpoints >= 1,
           "train.eval_every, log_every, checkpoint_every and keep_checkpoints must be >= 1")
    _check(t.cpu_devices >= 0, f"train.cpu_devices must be >= 0, got {t.cpu_devices}")
    _check(0.0 < d.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    for key in ("data", "fsdp", "tensor"):
        size = getattr(cfg.mesh, key)
        _check(size == -1 or size >= 1, f"mesh.{key} must be -1 or >= 1, got {size}")
