"""gptjax's own formats outside training: the `gptjax export --format safetensors` directory, and new workdirs.

An export directory holds everything needed to use the model without its training workdir:

    model.safetensors    params, one tensor per leaf, named by its '/'-joined path (`layer_0/attn/query/kernel`)
    config.json          the full resolved gptjax Config
    tokenizer/           the tokenizer's files (as `gptjax.data.tokenizer.save` writes them)
    record.json          the checkpoint's reproducibility record (code version, packages, devices, command)
    gptjax_export.json   the marker: format version, dtype, step (written last; `gptjax.load` looks for it)

Directories are built beside their destination and renamed into place, so a failed run leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from gptjax import config as config_lib
from gptjax.api import EXPORT_MARKER, LM
from gptjax.config import Config
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.fileio import require_empty_destination, staged_directory

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RECORD_FILE = "record.json"
TOKENIZER_DIR = "tokenizer"
EXPERIMENT_FILE = "experiment.py"
EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
PATH_SEPARATOR = "/"


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

    from gptjax.model.transformer import Transformer
    from gptjax.train.state import init_params

    abstract = jax.eval_shape(lambda: nn.unbox(init_params(Transformer(model_cfg), 0, min(model_cfg.block_size, 8))))
    return {name: tuple(leaf.shape) for name, leaf in flatten_tree(abstract).items()}


def check_param_shapes(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Raises one GptjaxError naming the first missing, unexpected or wrongly shaped param."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        raise GptjaxError(f"{where} lacks param '{missing[0]}'{and_more(missing)} that the config needs")
    if unexpected:
        raise GptjaxError(f"{where} has param '{unexpected[0]}'{and_more(unexpected)} that the config does not have")
    for name in sorted(expected):
        if tuple(found[name]) != tuple(expected[name]):
            raise GptjaxError(f"{where}: param '{name}' has shape {list(found[name])}, the config needs "
                              f"{list(expected[name])}")


def and_more(names: list[str]) -> str:
    """' (and N more)' after the first of `names` when there are others."""
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def write_json(path: Path, data: Any) -> None:
    """Pretty, key-sorted JSON (a new file inside a staging directory, so no atomic dance is needed)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


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


def read_safetensors_lazily(path: Path, names: list[str] | None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) for `names` (all when None) of one safetensors file, with a progress bar."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            wanted = list(handle.keys()) if names is None else names
            for name in tqdm(wanted, desc=f"read {path.name}", unit="tensor", leave=False):
                yield name, np.asarray(handle.get_tensor(name), dtype=np.float32)
    except (SafetensorError, OSError, ValueError) as e:
        raise GptjaxError(f"{path} is not a readable safetensors file ({e}); it may be truncated or corrupt — "
                          f"write or download it again") from None


def export_native(lm: LM, out: str | Path, dtype: str = "float32") -> Path:
    """Writes `lm` as a gptjax export directory at `out` (which must not exist or be empty); returns `out`."""
    if dtype not in EXPORT_DTYPES:
        raise GptjaxError(f"export dtype '{dtype}' is not one of {', '.join(EXPORT_DTYPES)}")
    out = Path(out)
    tensors = flatten_params(jax.device_get(lm.params))
    marker = {"format": "gptjax", "format_version": FORMAT_VERSION, "dtype": dtype, "step": lm.step,
              "n_params": int(sum(t.size for t in tensors.values())), "data_dir": lm.meta.get("data_dir", ""),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with staged_directory(out, "--out directory") as staging:
        write_safetensors(staging / WEIGHTS_FILE, tensors, dtype, {"format": "gptjax", "dtype": dtype})
        write_json(staging / CONFIG_FILE, config_lib.to_dict(lm.cfg))
        tokenizers.save(lm.tokenizer, staging / TOKENIZER_DIR)
        write_json(staging / RECORD_FILE, lm.meta.get("record", {}))
        write_json(staging / EXPORT_MARKER, marker)
    return out


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise GptjaxError(f"{path} is missing; {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise GptjaxError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise GptjaxError(f"{path} must hold a JSON object")
    return data


def load_export(path: str | Path) -> LM:
    """An LM from a `gptjax export --format safetensors` directory alone (no training workdir needed).

    Params are float32 whatever the stored dtype (bfloat16 exports come back rounded, as stored)."""
    path = Path(path)
    broken = "the export is incomplete; export it again"
    marker = _read_json(path / EXPORT_MARKER, broken)
    version = marker.get("format_version")
    if version != FORMAT_VERSION:
        raise GptjaxError(f"{path / EXPORT_MARKER}: format_version {version!r} is not {FORMAT_VERSION}, the one this "
                          f"gptjax reads; export it again with this version")
    cfg = config_lib.from_dict(_read_json(path / CONFIG_FILE, broken))
    if not (path / TOKENIZER_DIR).is_dir():
        raise GptjaxError(f"{path / TOKENIZER_DIR} is missing; {broken}")
    tokenizer = tokenizers.load(path / TOKENIZER_DIR)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise GptjaxError(f"{weights} is missing; {broken}")
    check_param_shapes(safetensors_shapes(weights), expected_param_shapes(cfg.model), str(weights))
    params = unflatten_params(dict(read_safetensors_lazily(weights, None)))
    params = jax.tree_util.tree_map(jnp.asarray, params)
    record = _read_json(path / RECORD_FILE, broken) if (path / RECORD_FILE).is_file() else {}
    meta = {"config": config_lib.to_dict(cfg), "record": record, "data_dir": marker.get("data_dir", ""), "export": marker}
    return LM(cfg, params, tokenizer, marker.get("step"), meta)


def experiment_source(cfg: Config, header: str) -> str:
    """An experiment file whose `get_config()` reproduces `cfg` exactly (for `gptjax train --config`)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += ["from gptjax.config import base_config", "", "", "def get_config():", "    c = base_config()"]
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            lines += [f"    c.{field.name}.{sub.name} = {getattr(value, sub.name)!r}" for sub in dataclasses.fields(value)]
        else:
            lines.append(f"    c.{field.name} = {value!r}")
    lines.append("    return c")
    return "\n".join(lines) + "\n"


def fresh_data_state() -> dict:
    """The data-iterator state a run has before its first step: the grain state of a not-yet-started iterator
    (as `gptjax.data.loader.train_iterator` builds them: range -> map -> to_iter_dataset), at step 0."""
    import grain

    iterator = iter(grain.MapDataset.range(1).map(lambda step: step).to_iter_dataset(grain.ReadOptions(num_threads=0)))
    return {"grain": iterator.get_state(), "step": 0}


def write_workdir(cfg: Config, params: Mapping[str, Any], tokenizer: tokenizers.Tokenizer, workdir: str | Path,
                  provenance: dict, experiment_header: str) -> Path:
    """A new training workdir holding `params` as a step-0 checkpoint with a fresh optimizer state.

    Built with the trainer's own state functions, so `gptjax.load`, `generate`, `eval` and `train` (continuing
    from step 0) treat it as any other run. `workdir` must not exist or be empty; it appears only when complete."""
    from gptjax.model.transformer import Transformer
    from gptjax.parallel.mesh import make_mesh
    from gptjax.train.checkpoint import Checkpoints
    from gptjax.train.metrics import reproducibility_record
    from gptjax.train.optim import make_optimizer
    from gptjax.train.state import create_state, state_shardings

    config_lib.validate(cfg)
    workdir = Path(workdir).absolute()
    check_param_shapes({k: v.shape for k, v in flatten_params(params).items()}, expected_param_shapes(cfg.model),
                       "the imported params")
    with staged_directory(workdir, "--workdir") as staging:
        mesh = make_mesh(cfg.mesh)
        model = Transformer(cfg.model)
        optimizer = make_optimizer(cfg.train)
        shardings, _ = state_shardings(model, optimizer, cfg, mesh)
        state = create_state(model, optimizer, cfg, mesh, shardings)
        placed = jax.device_put(jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), dict(params)),
                                shardings.params)
        state = state.replace(params=placed)
        record = {**reproducibility_record(dict(mesh.shape)), "imported_from": provenance}
        meta = {"config": config_lib.to_dict(cfg), "tokenizer": tokenizers.to_json_dict(tokenizer),
                "tokenizer_fingerprint": tokenizers.fingerprint(tokenizer), "record": record, "data_dir": ""}
        checkpoints = Checkpoints(staging, keep=cfg.train.keep_checkpoints, async_save=False)
        try:
            checkpoints.save(state, fresh_data_state(), meta, force=True)
        finally:
            checkpoints.close()
        write_json(staging / CONFIG_FILE, config_lib.to_dict(cfg))
        write_json(staging / RECORD_FILE, record)
        tokenizers.save(tokenizer, staging / TOKENIZER_DIR)
        (staging / EXPERIMENT_FILE).write_text(experiment_source(cfg, experiment_header), encoding="utf-8")
    return workdir
