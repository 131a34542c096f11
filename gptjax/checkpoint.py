"""orbax checkpoints of a run: params, optimizer state + step + RNG, data-iterator state, and metadata.

Items per step: `params` (restorable alone, for `gptjax.load`), `opt` (opt_state, step, rng, spike statistics),
`data` (grain iterator state, JSON) and `meta` (resolved config, tokenizer files, reproducibility record, JSON).
Frozen params (e.g. a DPO reference) are not saved: they are rebuilt from `train.init_from` when a run resumes.

A checkpoint that does not restore (truncated, corrupt) is never deleted and never silently skipped: readers fall
back to the newest one that restores with a warning naming the bad step, and the trainer moves the bad one aside
(`checkpoints_unreadable/`) so the run can save that step again.
"""
from __future__ import annotations

import errno
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from gptjax import fileio
from gptjax.errors import GptjaxError, warn
from gptjax.model.transformer import abstract_params
from gptjax.parallel.distributed import agreed_unreadable, barrier

if TYPE_CHECKING:
    from gptjax.train.state import TrainState

ITEMS = ("params", "opt", "data", "meta")
# Loss-spike statistics in the `opt` item, present only while train.spike_factor > 0 (a field a resume may change)
SPIKE_STATS = {"loss_ema": np.float32, "skipped_steps": np.int32}
CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints_unreadable"

logging.getLogger("absl").setLevel(logging.WARNING)


def with_shardings(abstract_tree, shardings):
    """ShapeDtypeStructs carrying the target shardings, so orbax restores straight into place."""
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_tree, shardings)


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _opt_item(state: TrainState) -> dict:
    item = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
    if state.loss_ema is not None:
        item.update(loss_ema=state.loss_ema, skipped_steps=state.skipped_steps)
    if state.ema_params is not None:
        item.update(ema_params=state.ema_params)
    return item


def _ema_params(opt: dict, target: TrainState, params):
    """The state's weight average: the restored one, the params where the checkpoint has none (train.ema_decay
    turned on), None where the current config keeps none."""
    if target.ema_params is None:
        return None
    if "ema_params" in opt:
        return opt["ema_params"]
    return jax.tree_util.tree_map(lambda x: x.copy(), params)  # its own buffers: the train step donates the state


def _spike_stats(opt: dict, target: TrainState) -> dict:
    """The state's loss-spike statistics: the restored ones, zeros where the checkpoint has none, or None where
    the current config keeps none."""
    if target.loss_ema is None:
        return {"loss_ema": None, "skipped_steps": None}
    return {key: opt[key] if key in opt else jax.device_put(np.zeros((), dtype), target.step.sharding)
            for key, dtype in SPIKE_STATS.items()}


def param_key(path) -> str:
    return "/".join(str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path)


def saved_params(params, mask):
    """What a checkpoint stores of `params`: all of them, or (with a trainable `mask`) a flat dict of the trainable
    leaves only — the frozen rest is the `train.init_from` model's and is rebuilt from it."""
    if mask is None:
        return params
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    keep = jax.tree_util.tree_leaves(mask)
    return {param_key(path): leaf for (path, leaf), kept in zip(flat, keep) if kept}


def with_saved(base_params, saved: dict):
    """`base_params` with the leaves a partial checkpoint saved put in their places."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: saved.get(param_key(path), leaf), base_params)


def checkpoint_meta(cfg, tokenizer, record: dict, data_dir: str | Path | None,
                    data_identity: str | None = None) -> dict:
    """The `meta` item every checkpoint carries: resolved config, tokenizer files (None for a weights-only import)
    and its fingerprint, the reproducibility record, the data dir it trained on and that data's identity
    (`gptjax.data.store.manifest_identity`)."""
    from gptjax import config as config_lib
    from gptjax.data import tokenizer as tokenizers

    return {"config": config_lib.to_dict(cfg),
            "tokenizer": None if tokenizer is None else tokenizers.to_json_dict(tokenizer),
            "tokenizer_fingerprint": None if tokenizer is None else tokenizers.fingerprint(tokenizer),
            "record": record, "data_dir": str(data_dir or ""), "data_identity": data_identity}


TRANSIENT_ERRNOS = {errno.EIO, errno.ENOMEM, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.EINTR,
                    errno.ECONNRESET, errno.ECONNABORTED, errno.ENETUNREACH, errno.EHOSTUNREACH}
TRANSIENT_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")  # tensorstore's codes
RESTORE_ATTEMPTS = 3
RETRY_WAIT_S = 0.5


def is_transient(error: BaseException) -> bool:
    """Whether reading failed for a reason outside the checkpoint (I/O, memory, network), so the same read may
    succeed again; missing, short or undecodable files are the checkpoint's own fault."""
    seen = error
    while seen is not None:
        if isinstance(seen, (MemoryError, TimeoutError, ConnectionError)):
            return True
        if isinstance(seen, OSError) and seen.errno in TRANSIENT_ERRNOS:
            return True
        if any(status in str(seen) for status in TRANSIENT_STATUS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _restore_with_retries(step: int, restore: Callable[[int], Any], directory: Path) -> Any:
    """`restore(step)`, read again after a transient error; still failing that way, a GptjaxError and nothing moved."""
    for attempt in range(1, RESTORE_ATTEMPTS + 1):
        try:
            return restore(step)
        except Exception as error:
            if not is_transient(error):
                raise
            if attempt == RESTORE_ATTEMPTS:
                raise GptjaxError(f"reading checkpoint step {step} in {directory} failed {attempt} times "
                                  f"({_short(error)}), an error of the machine, not of the checkpoint; nothing was "
                                  f"moved: fix the cause (I/O, memory, network) and run the same command again"
                                  ) from error
            time.sleep(RETRY_WAIT_S * attempt)


def newest_restorable(steps: list[int], restore: Callable[[int], Any], directory: Path) -> tuple[int, Any, list[int]]:
    """(step, restored, unreadable steps) for the newest of `steps` that `restore` reads, warning per bad one.

    Only a checkpoint that is itself unreadable counts as bad; a transient error is retried, then raised."""
    bad = []
    for step in sorted(steps, reverse=True):
        try:
            return step, _restore_with_retries(step, restore, directory), bad
        except GptjaxError:
            raise
        except Exception as error:  # orbax/tensorstore raise many types for truncated or corrupt files
            bad.append(step)
            older = [s for s in steps if s < step]
            warn(f"checkpoint step {step} in {directory} cannot be restored ({_short(error)}); "
                 + (f"falling back to step {max(older)}" if older else "no older checkpoint remains"))
    raise GptjaxError(f"no checkpoint in {directory} restores (steps {', '.join(map(str, sorted(steps)))} are all "
                      f"unreadable); nothing was deleted: inspect or move them, or use a new --workdir")


class Checkpoints:
    """A run's CheckpointManager: async saves, keep the last K, restore with shardings, fall back past bad steps."""

    def __init__(self, workdir: str | Path, keep: int = 3, async_save: bool = True, saved_mask=None):
        self.saved_mask = saved_mask  # a trainable mask: only those params are saved (`saved_params`)
        self.workdir = fileio.absolute(workdir)  # a gs:// workdir is written by orbax/tensorstore directly
        self.directory = self.workdir / CHECKPOINT_DIR
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS,
                                             item_handlers={"opt": ocp.StandardCheckpointHandler()})
        self._saving: int | None = None

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, data_state: dict, meta: dict) -> bool:
        """Starts an async save of `state` (a finished earlier save is checked first); errors are GptjaxErrors."""
        step = int(state.step)
        if step in self.manager.all_steps():
            return False
        self.wait()
        try:
            started = self.manager.save(step, force=True, args=ocp.args.Composite(
                params=ocp.args.StandardSave(saved_params(state.params, self.saved_mask)),
                opt=ocp.args.StandardSave(_opt_item(state)),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ))
        except Exception as error:
            raise self._save_failed(step, error) from error
        self._saving = step
        return started

    def _save_failed(self, step: int, error: BaseException) -> GptjaxError:
        intact = [s for s in self.manager.all_steps() if s != step]
        latest = f"the latest intact checkpoint is step {max(intact)}" if intact else "no earlier checkpoint exists"
        return GptjaxError(f"saving checkpoint step {step} to {self.directory} failed ({_short(error)}); {latest}; "
                           f"fix the cause (disk space, permissions) and run the same command to resume from it")

    def wait(self) -> None:
        """Blocks until the pending async save is on disk; its failure is one GptjaxError."""
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            step, self._saving = self._saving, None
            raise self._save_failed(step if step is not None else -1, error) from error
        self._saving = None

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def _restore(self, step: int, abstract_state: TrainState, shardings: TrainState,
                 base_params=None) -> tuple[TrainState, dict, dict]:
        target = with_shardings(abstract_state, shardings)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(saved_params(target.params, self.saved_mask)),
            opt=ocp.args.StandardRestore(self._opt_target(step, target)),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        opt = restored["opt"]
        params = restored["params"] if self.saved_mask is None else with_saved(base_params, restored["params"])
        state = target.replace(step=opt["step"], params=params, opt_state=opt["opt_state"], rng=opt["rng"], frozen=None,
                               ema_params=_ema_params(opt, target, params), **_spike_stats(opt, target))
        return state, restored["data"], restored["meta"]

    def _opt_target(self, step: int, target: TrainState) -> dict:
        """What to restore of `opt`: the current state's structure, with the loss-spike statistics and the weight
        average as the checkpoint holds them (train.spike_factor and train.ema_decay may have been turned on or off
        since it was saved)."""
        item = {key: value for key, value in _opt_item(target).items() if key not in (*SPIKE_STATS, "ema_params")}
        saved = self.manager.item_metadata(step)["opt"]
        for key, dtype in SPIKE_STATS.items():
            if saved is not None and key in saved:
                item[key] = jax.ShapeDtypeStruct((), dtype, sharding=target.step.sharding)
        if saved is not None and "ema_params" in saved:
            item["ema_params"] = target.params
        return item

    def restore_latest(self, abstract_state: TrainState, shardings: TrainState,
                       base_params=None) -> tuple[TrainState, dict, dict] | None:
        """(state placed in `shardings`, data-iterator state, meta) of the newest checkpoint that restores, or None
        when there is none. Unreadable newer ones are moved to `checkpoints_unreadable/` (never deleted). A partial
        checkpoint (`saved_mask`) fills in `base_params` (placed params of the model it finetunes)."""
        steps = self.all_steps()
        if not steps:
            return None
        failure = None
        try:
            step, restored, bad = newest_restorable(
                steps, lambda s: self._restore(s, abstract_state, shardings, base_params), self.directory)
        except GptjaxError as error:  # still take part in the agreement below, so no other process waits for this one
            failure, step, restored, bad = error, -1, None, []
        agreed_bad = agreed_unreadable(step, bad, str(self.directory))
        if failure is not None:
            raise failure
        for bad_step in agreed_bad:  # set aside only what every process found unreadable (process 0 moves them)
            self._set_aside(bad_step)
        if agreed_bad:
            barrier("checkpoints set aside")  # every process then sees the same steps, so all save the next ones
            self.manager.reload()
        return restored

    def _set_aside(self, step: int) -> None:
        if jax.process_index() != 0:
            return
        aside = self.workdir / UNREADABLE_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        fileio.makedirs(aside.parent)
        fileio.move_tree(self.directory / str(step), aside)
        warn(f"moved the unreadable checkpoint step {step} to {aside}")
        self.manager.reload()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def restore_params(workdir: str | Path, step: int | None = None,
                   load_base: Callable[[str], Any] | None = None, ema: bool = False) -> tuple[Any, dict, int]:
    """(params on one device, meta, step) from a run's checkpoint (latest restorable unless `step`), no optimizer.

    The target comes from the checkpoint's own config, so a run saved on any mesh restores here. A finetune's
    partial checkpoint takes its other params from its base model, read by `load_base(path) -> params`. With `ema`,
    the moving average of the params (train.ema_decay) instead of the params."""
    import flax.linen as nn

    from gptjax import config as config_lib

    directory = fileio.absolute(workdir) / CHECKPOINT_DIR
    handlers = {"opt": ocp.StandardCheckpointHandler()} if ema else None  # its metadata tree is the ema target
    manager = ocp.CheckpointManager(directory, item_names=ITEMS, item_handlers=handlers)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def restore(s: int) -> tuple[Any, dict]:
        meta = manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        cfg = config_lib.from_dict(meta["config"])
        shapes = nn.unbox(abstract_params(cfg.model))
        target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), shapes)
        if ema:
            return _restore_ema_params(manager, s, device, workdir), meta
        mask = saved_mask_of(cfg, meta)
        params = manager.restore(s, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(saved_params(target, mask))))["params"]
        if mask is not None:
            params = with_saved(base_model_params(meta, target, load_base), params)
        return params, meta

    try:
        steps = list(manager.all_steps()) if step is None else [step]
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {workdir}")
        if step is not None and step not in manager.all_steps():
            raise GptjaxError(f"{workdir} has no checkpoint at step {step} (it has {sorted(manager.all_steps())})")
        found, (params, meta), bad = newest_restorable(steps, restore, directory)
        if bad:
            warn(f"loaded step {found} of {workdir}")
        return params, meta, found
    finally:
        manager.close()


def _restore_ema_params(manager: ocp.CheckpointManager, step: int, device, workdir) -> Any:
    """The weight average kept in step `step`'s optimizer item, on `device` (its target read from the item's own
    metadata: the optimizer that wrote it need not be rebuilt)."""
    saved = manager.item_metadata(step)["opt"]
    if saved is None or "ema_params" not in saved:
        raise GptjaxError(f"checkpoint step {step} of {workdir} keeps no moving average of the weights; train with "
                          f"train.ema_decay > 0 to have one, or leave out --ema")
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), dict(saved))
    return manager.restore(step, args=ocp.args.Composite(opt=ocp.args.StandardRestore(target)))["opt"]["ema_params"]


def saved_mask_of(cfg, meta: dict):
    """The trainable mask a checkpoint was saved with (None: it holds every param)."""
    if meta.get("saved_params") != "trainable":
        return None
    from gptjax.finetune.setup import run_trainable_mask

    return run_trainable_mask(cfg)


def base_model_params(meta: dict, target, load_base: Callable[[str], Any] | None):
    """The params of the model a partial checkpoint finetunes (its `train.init_from`, read by `load_base`), shaped
    like `target`; the params it adds (adapters, heads) keep zeros until the checkpoint's own values replace them."""
    import numpy as np

    from gptjax.finetune.freeze import is_new_param

    source = meta.get("base") or meta["config"]["train"]["init_from"]
    if not fileio.as_path(source).exists():
        raise GptjaxError(f"this checkpoint holds only the finetuned params; the rest come from its base model "
                          f"{source} (train.init_from), which is gone: restore it there, or export the finetune "
                          f"while the base exists (gptjax export)")
    if load_base is None:
        raise GptjaxError(f"this checkpoint holds only the finetuned params; load it with gptjax.load, which reads "
                          f"the rest from its base model {source}")
    have = {param_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(load_base(source))[0]}

    def fill(path, abstract):
        key = param_key(path)
        if key in have and tuple(have[key].shape) == tuple(abstract.shape):
            return jax.device_put(np.asarray(have[key], abstract.dtype), abstract.sharding)
        if is_new_param(path) or (key in have and key in ("embedding", "lm_head")):  # new, or widened by added tokens:
            return jax.device_put(np.zeros(abstract.shape, abstract.dtype), abstract.sharding)  # saved, so replaced
        raise GptjaxError(f"the base model {source} has no param {key} of shape {tuple(abstract.shape)}, which this "
                          f"finetune's checkpoint expects from it; it changed since the finetune started")

    return jax.tree_util.tree_map_with_path(fill, target)
