"""gptjax's own export format: the `gptjax export --format safetensors` directory, written and read (`gptjax.load`).

An export directory holds everything needed to use the model without its training workdir:

    model.safetensors    params, one tensor per leaf, named by its '/'-joined path (`layer_0/attn/query/kernel`)
    config.json          the full resolved gptjax Config
    tokenizer/           the tokenizer's files (as `gptjax.data.tokenizer.save` writes them); absent when the
                         model has none (a weights-only import), which the marker records as has_tokenizer=false
    record.json          the checkpoint's reproducibility record (code version, packages, devices, command)
    gptjax_export.json   the marker: format version, dtype, step (written last; `gptjax.load` looks for it)

Directories are built beside their destination and renamed into place, so a failed run leaves nothing behind.
Loading trusts nothing: every tensor must be a finite float of the shape config.json implies, config.json's
dimensions must fit the tensors, and the tokenizer's vocabulary must fit model.vocab_size.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from gptjax import config as config_lib
from gptjax import fileio
from gptjax.config import Config
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.fileio import staged_directory

if TYPE_CHECKING:
    from gptjax.api import LM

FORMAT_VERSION = 1
EXPORT_MARKER = "gptjax_export.json"  # written last: its presence makes a directory an export
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RECORD_FILE = "record.json"
TOKENIZER_DIR = "tokenizer"
EXPERIMENT_FILE = "experiment.py"
EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
PATH_SEPARATOR = "/"
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors dtype names a weight may be stored in
DIMENSION_AXES = (  # (dimension of `config_dimensions`, the param (last path parts) showing it, its axis there)
    ("embedding width", "embedding", -1), ("vocabulary rows", "embedding", 0),
    ("query heads", "attn/query/kernel", -2), ("head size", "attn/query/kernel", -1),
    ("key/value heads", "attn/key/kernel", -2), ("MLP width", "mlp/fc/kernel", -1), ("MLP width", "mlp/up/kernel", -1),
    ("position rows", "pos_embedding", 0),
)


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as {'a/b/c': leaf}, leaves untouched (arrays or ShapeDtypeStructs)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, f"{prefix}{key}{PATH_SEPARATOR}"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flatten_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The param tree as {'layer_0/attn/query/kernel': host array}, one entry per leaf."""
    return {name: np.asarray(leaf) for name, leaf in flatten_tree(params).items()}


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of `flatten_params`."""
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        *parents, name = path.split(PATH_SEPARATOR)
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = leaf
    return tree


def expected_param_shapes(model_cfg: config_lib.ModelConfig) -> dict[str, tuple[int, ...]]:
    """Flattened name -> shape of every param the Transformer of `model_cfg` has (traced, nothing computed)."""
    import flax.linen as nn

    from gptjax.model.transformer import abstract_params

    abstract = nn.unbox(abstract_params(model_cfg))
    return {name: tuple(leaf.shape) for name, leaf in flatten_tree(abstract).items()}


def deciding_field(param: str) -> str:
    """The config switch that decides whether a param named `param` exists (for error messages)."""
    parts = param.split(PATH_SEPARATOR)
    if parts[0] == "lm_head":
        return "model.tie_embeddings"
    if parts[0] == "pos_embedding":
        return "model.position"
    if parts[0] == "layers" or parts[0].startswith("layer_"):
        if parts[-1] == "bias":
            return "model.use_bias / model.norm"
        if len(parts) > 1 and parts[1] == "mlp":
            return "model.mlp"
        return "model.n_layer / model.scan_layers"
    return "model.norm / model.use_bias" if parts[-1] == "bias" else "the model config"


def check_param_shapes(
    found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], where: str
) -> None:
    """Raises one GptjaxError naming the first missing, unexpected or wrongly shaped param."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        raise GptjaxError(f"{where} lacks param '{missing[0]}'{and_more(missing)} that the config needs "
                          f"(check {deciding_field(missing[0])})")
    if unexpected:
        raise GptjaxError(f"{where} has param '{unexpected[0]}'{and_more(unexpected)} that the config does not have "
                          f"(check {deciding_field(unexpected[0])})")
    for name in sorted(expected):
        if tuple(found[name]) != tuple(expected[name]):
            raise GptjaxError(f"{where}: param '{name}' has shape {list(found[name])}, the config needs "
                              f"{list(expected[name])}")


def config_dimensions(m: config_lib.ModelConfig) -> dict[str, tuple[int, str]]:
    """Each dimension the param shapes show: (its size under `m`, the config fields that set it, with values)."""
    dimensions = {
        "layers": (m.n_layer, f"model.n_layer={m.n_layer}"),
        "embedding width": (m.d_model, f"model.d_model={m.d_model}"),
        "vocabulary rows": (m.padded_vocab, f"model.vocab_size={m.vocab_size} (padded to a multiple of "
                                            f"model.vocab_multiple={m.vocab_multiple})"),
        "query heads": (m.n_head, f"model.n_head={m.n_head}"),
        "key/value heads": (m.kv_heads, f"model.n_kv_head={m.n_kv_head} (0 = model.n_head)"),
        "head size": (m.head_dim, f"model.d_model / model.n_head = {m.d_model} / {m.n_head}"),
        "MLP width": (m.ff_dim, f"model.d_ff={m.d_ff} (0 = derived from model.d_model and model.mlp)"),
    }
    if m.position == "learned":  # the only position scheme with a param table
        dimensions["position rows"] = (m.position_limit, f"model.max_positions={m.max_positions} (0 = "
                                                         f"model.block_size={m.block_size})")
    return dimensions


def stored_dimensions(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """The `config_dimensions` that flattened param `shapes` show (each only where some param shows it)."""
    found: dict[str, int] = {}
    layer_groups = {name.split(PATH_SEPARATOR)[0] for name in shapes if name.startswith("layer_")}
    stacked = [shape[0] for name, shape in sorted(shapes.items()) if name.startswith(f"layers{PATH_SEPARATOR}")]
    if layer_groups or stacked:
        found["layers"] = len(layer_groups) if layer_groups else stacked[0]
    for dimension, param, axis in DIMENSION_AXES:
        name = next((name for name in sorted(shapes) if name == param or name.endswith(PATH_SEPARATOR + param)), None)
        if name is not None:
            found.setdefault(dimension, shapes[name][axis])
    return found


def check_config_fits_shapes(m: config_lib.ModelConfig, shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Raises one GptjaxError naming the config field whose value does not fit the stored param `shapes`."""
    stored = stored_dimensions(shapes)
    for dimension, (size, fields) in config_dimensions(m).items():
        if dimension in stored and stored[dimension] != size:
            raise GptjaxError(f"{where} holds {stored[dimension]} {dimension}, but its config has {fields}, which "
                              f"needs {size}; the config was edited or belongs to another model — restore it or "
                              f"export the model again")


def and_more(names: list[str]) -> str:
    """' (and N more)' after the first of `names` when there are others."""
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def write_json(path: Path, data: Any) -> None:
    """Pretty, key-sorted JSON, written durably."""
    fileio.write_json_atomic(path, data)


def read_json_object(path: Path, what: str, fix: str) -> dict:
    """The JSON object at `path`; missing, corrupt or not an object -> one GptjaxError naming `what` and `fix`."""
    data = fileio.read_json(path, what, fix)
    if not isinstance(data, dict):
        raise GptjaxError(f"{what} {path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], dtype: str, metadata: dict[str, str]) -> None:
    """Writes `tensors` cast to `dtype` ('float32' | 'bfloat16') with the safetensors package."""
    from safetensors.numpy import save_file

    target = EXPORT_DTYPES[dtype]
    cast = {name: np.ascontiguousarray(np.asarray(array).astype(target, copy=False))
            for name, array in tqdm(tensors.items(), desc=f"cast {dtype}", unit="tensor", leave=False)}
    save_file(cast, str(path), metadata=metadata)


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (no data read); unreadable or truncated -> GptjaxError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise GptjaxError(f"{path} is not a readable safetensors file ({e}); it may be truncated or corrupt — "
                          f"write or download it again") from None


def checked_weight(handle: Any, name: str, path: Path) -> np.ndarray:
    """Tensor `name` of an open safetensors file as float32; a non-float dtype or a NaN/inf -> GptjaxError."""
    dtype = handle.get_slice(name).get_dtype()
    if dtype not in FLOAT_DTYPES:
        raise GptjaxError(f"{path}: tensor '{name}' is stored as {dtype}, not a float type "
                          f"({', '.join(FLOAT_DTYPES)}), so it is not a weight; the file is damaged or not a model "
                          f"checkpoint — write it again")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, reported just below
        array = np.asarray(handle.get_tensor(name), dtype=np.float32)
    non_finite = array.size - int(np.count_nonzero(np.isfinite(array)))
    if non_finite:
        raise GptjaxError(f"{path}: tensor '{name}' holds {non_finite} NaN or infinite value(s) (as float32); the "
                          f"checkpoint is corrupt or its training diverged — use an earlier or intact checkpoint")
    return array


def read_safetensors_lazily(path: Path, names: list[str] | None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) for `names` (all when None) of one safetensors file, with a progress bar; every
    tensor is checked by `checked_weight`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            wanted = list(handle.keys()) if names is None else names
            for name in tqdm(wanted, desc=f"read {path.name}", unit="tensor", leave=False):
                yield name, checked_weight(handle, name, path)
    except (SafetensorError, OSError, ValueError) as e:
        raise GptjaxError(f"{path} is not a readable safetensors file ({e}); it may be truncated or corrupt — "
                          f"write or download it again") from None


def export_native(lm: LM, out: str | Path, dtype: str = "float32") -> Path:
    """Writes `lm` as a gptjax export directory at `out` (which must not exist or be empty); returns `out`.

    An LM without a tokenizer is exported without tokenizer/ (the marker says has_tokenizer=false)."""
    if dtype not in EXPORT_DTYPES:
        raise GptjaxError(f"export dtype '{dtype}' is not one of {', '.join(EXPORT_DTYPES)}")
    out = Path(out)
    tensors = flatten_params(jax.device_get(lm.params))
    marker = {"format": "gptjax", "format_version": FORMAT_VERSION, "dtype": dtype, "step": lm.step,
              "n_params": int(sum(t.size for t in tensors.values())), "data_dir": lm.meta.get("data_dir", ""),
              "has_tokenizer": lm.tokenizer is not None, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with staged_directory(out, "--out directory") as staging:
        write_safetensors(staging / WEIGHTS_FILE, tensors, dtype, {"format": "gptjax", "dtype": dtype})
        write_json(staging / CONFIG_FILE, config_lib.to_dict(lm.cfg))
        if lm.tokenizer is not None:
            tokenizers.save(lm.tokenizer, staging / TOKENIZER_DIR)
        write_json(staging / RECORD_FILE, lm.meta.get("record", {}))
        write_json(staging / EXPORT_MARKER, marker)
    return out


def check_tokenizer_fits(tokenizer: tokenizers.Tokenizer, m: config_lib.ModelConfig, where: str, fix: str) -> None:
    """Raises unless every id of `tokenizer` is below model.vocab_size."""
    if tokenizer.vocab_size > m.vocab_size:
        raise GptjaxError(f"the {tokenizer.kind} tokenizer {where} has {tokenizer.vocab_size} tokens, more than "
                          f"model.vocab_size={m.vocab_size}; {fix}")


def load_export(path: str | Path) -> tuple[Config, Any, tokenizers.Tokenizer | None, int | None, dict]:
    """(config, params, tokenizer, step, meta) of a `gptjax export --format safetensors` directory alone (no training
    workdir needed): what `gptjax.load` makes an LM of.

    Params are float32 whatever the stored dtype (bfloat16 exports come back rounded, as stored). Nothing is
    trusted: config.json must fit the tensors and the tokenizer, and every tensor must be finite floats."""
    path = Path(path)
    broken = "the export is incomplete or damaged; export it again"
    marker = read_json_object(path / EXPORT_MARKER, "export marker", broken)
    version = marker.get("format_version")
    if version != FORMAT_VERSION:
        raise GptjaxError(f"{path / EXPORT_MARKER}: format_version {version!r} is not {FORMAT_VERSION}, the one this "
                          f"gptjax reads; export it again with this version")
    cfg = config_lib.from_dict(read_json_object(path / CONFIG_FILE, "export config", broken))
    tokenizer = None
    if marker.get("has_tokenizer", True):
        if not (path / TOKENIZER_DIR).is_dir():
            raise GptjaxError(f"{path / TOKENIZER_DIR} is missing; {broken}")
        tokenizer = tokenizers.load(path / TOKENIZER_DIR)
        check_tokenizer_fits(tokenizer, cfg.model, f"in {path / TOKENIZER_DIR}",
                             f"{path / CONFIG_FILE} was edited or the tokenizer replaced — {broken}")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise GptjaxError(f"{weights} is missing; {broken}")
    shapes = safetensors_shapes(weights)
    check_config_fits_shapes(cfg.model, shapes, str(weights))
    check_param_shapes(shapes, expected_param_shapes(cfg.model), str(weights))
    params = unflatten_params(dict(read_safetensors_lazily(weights, None)))
    params = jax.tree_util.tree_map(jnp.asarray, params)
    record = read_json_object(path / RECORD_FILE, "export record", broken) if (path / RECORD_FILE).is_file() else {}
    meta = {"config": config_lib.to_dict(cfg), "record": record, "data_dir": marker.get("data_dir", ""),
            "export": marker}
    return cfg, params, tokenizer, marker.get("step"), meta


