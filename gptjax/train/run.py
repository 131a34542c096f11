"""A run's workdir: opening one to train in (new or resumed), and writing a new one from given params (imports)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from gptjax import config as config_lib
from gptjax import fileio
from gptjax.config import Config
from gptjax.data import tokenizer as tokenizers
from gptjax.export import (CONFIG_FILE, EXPERIMENT_FILE, RECORD_FILE, TOKENIZER_DIR, check_param_shapes,
                           expected_param_shapes, flatten_params, write_json)
from gptjax.fileio import staged_directory


def field_assignments(path: str, section: Any) -> list[str]:
    """`path.field = value` for every leaf field of the dataclass `section`, nested sections included."""
    lines = []
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if dataclasses.is_dataclass(value):
            lines += field_assignments(f"{path}.{field.name}", value)
        else:
            lines.append(f"{path}.{field.name} = {value!r}")
    return lines


def experiment_source(cfg: Config, header: str) -> str:
    """An experiment file whose `get_config()` reproduces `cfg` exactly (for `gptjax train --config`)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += ["from gptjax.config import base_config", "", "", "def get_config():", "    c = base_config()"]
    lines += [f"    {line}" for line in field_assignments("c", cfg)]
    lines.append("    return c")
    return "\n".join(lines) + "\n"


def fresh_data_state() -> dict:
    """The data-iterator state a run has before its first step: the grain state of a not-yet-started iterator
    (as `gptjax.data.loader.train_iterator` builds them: range -> map -> to_iter_dataset), at step 0."""
    import grain

    iterator = iter(grain.MapDataset.range(1).map(lambda step: step).to_iter_dataset(grain.ReadOptions(num_threads=0)))
    return {"grain": iterator.get_state(), "step": 0}


def write_workdir(cfg: Config, params: Mapping[str, Any], tokenizer: tokenizers.Tokenizer | None,
                  workdir: str | Path, provenance: dict, experiment_header: str) -> Path:
    """A new training workdir holding `params` as a step-0 checkpoint with a fresh optimizer state.

    Built with the trainer's own state functions, so `gptjax.load`, `generate`, `eval` and `train` (continuing
    from step 0) treat it as any other run. `workdir` must not exist or be empty; it appears only when complete.
    Without a tokenizer (a weights-only import) the checkpoint meta holds tokenizer=None and the workdir has no
    tokenizer/ and no experiment file: such a model works on token ids only and cannot be trained."""
    from gptjax.parallel.mesh import make_mesh
    from gptjax.checkpoint import Checkpoints, checkpoint_meta
    from gptjax.train.metrics import reproducibility_record
    from gptjax.train.step import build_step

    config_lib.validate(cfg)
    workdir = Path(workdir).absolute()
    check_param_shapes({k: v.shape for k, v in flatten_params(params).items()}, expected_param_shapes(cfg.model),
                       "the imported params")
    with staged_directory(workdir, "--workdir") as staging:
        mesh = make_mesh(cfg.mesh)
        step = build_step(cfg, mesh)
        placed = jax.device_put(jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), dict(params)),
                                step.shardings.params)
        state = step.init_state().replace(params=placed)
        record = {**reproducibility_record(dict(mesh.shape)), "imported_from": provenance}
        meta = checkpoint_meta(cfg, tokenizer, record, None)
        checkpoints = Checkpoints(staging, keep=cfg.train.keep_checkpoints, async_save=False)
        try:
            checkpoints.save(state, fresh_data_state(), meta)
        finally:
            checkpoints.close()
        write_json(staging / CONFIG_FILE, config_lib.to_dict(cfg))
        write_json(staging / RECORD_FILE, record)
        if tokenizer is not None:
            tokenizers.save(tokenizer, staging / TOKENIZER_DIR)
            fileio.write_text_atomic(staging / EXPERIMENT_FILE, experiment_source(cfg, experiment_header))
    return workdir
