"""orbax checkpoints of a run: params, optimizer state + step + RNG, data-iterator state, and metadata.

Items per step: `params` (restorable alone, for `gptjax.load`), `opt` (opt_state, step, rng), `data` (grain
iterator state, JSON) and `meta` (resolved config, tokenizer files, reproducibility record, JSON).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from gptjax.train.state import TrainState

ITEMS = ("params", "opt", "data", "meta")
CHECKPOINT_DIR = "checkpoints"

logging.getLogger("absl").setLevel(logging.WARNING)


def with_shardings(abstract_tree, shardings):
    """ShapeDtypeStructs carrying the target shardings, so orbax restores straight into place."""
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


class Checkpoints:
    """A run's CheckpointManager: async saves, keep the last K, restore with shardings."""

    def __init__(self, workdir: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, data_state: dict, meta: dict, force: bool = False) -> bool:
        step = int(state.step)
        if step in self.manager.all_steps():
            return False
        opt = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
        return self.manager.save(step, force=force, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt=ocp.args.StandardSave(opt),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        ))

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state: TrainState, shardings: TrainState) -> tuple[TrainState, dict]:
        """(state placed in `shardings`, data-iterator state)."""
        target = with_shardings(abstract_state, shardings)
        opt_target = {"opt_state": target.opt_state, "step": target.step, "rng": target.rng}
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target.params),
            opt=ocp.args.StandardRestore(opt_target),
            data=ocp.args.JsonRestore(),
        ))
        opt = restored["opt"]
        state = TrainState(step=opt["step"], params=restored["params"], opt_state=opt["opt_state"], rng=opt["rng"])
        return state, restored["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_params(model_cfg) -> Any:
    """ShapeDtypeStructs of a model's params, placed on this process's first device."""
    import flax.linen as nn

    from gptjax.model.transformer import Transformer
    from gptjax.train.state import init_params

    model = Transformer(model_cfg)
    shapes = jax.eval_shape(lambda: nn.unbox(init_params(model, 0, min(model_cfg.block_size, 8))))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), shapes)


def restore_params(workdir: str | Path, step: int | None = None) -> tuple[Any, dict, int]:
    """(params on one device, meta, step) from a run's checkpoint (latest unless `step`), with no optimizer.

    The target comes from the checkpoint's own config, so a run saved on any mesh restores here."""
    from gptjax import config as config_lib

    manager = ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, item_names=ITEMS)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {workdir}")
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        target = abstract_params(config_lib.from_dict(meta["config"]).model)
        restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
        return restored["params"], meta, step
    finally:
        manager.close()
