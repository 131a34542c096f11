"""The training loop: the one place with I/O. Resumes exactly from the newest restorable checkpoint in the workdir.

`train(cfg, workdir, hooks=...)` opens a `Run` (data, tokenizer, mesh, the step from `build_step`, checkpoints,
metric sinks, the workdir lock) and drives it step by step. Evaluation, checkpointing and logging are hooks; extra
hooks (the fault injection the tests use, a profiler) are passed in and never live in this file. Step n+1 is
dispatched before step n's metrics are read, so the host never waits on the device between steps.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from gptjax import config as config_lib
from gptjax import fileio
from gptjax.config import Config
from gptjax.data import loader, store
from gptjax.data import tokenizer as tokenizers
from gptjax.data.sources import cache_root
from gptjax.prepare.resolve import resolve_data
from gptjax.errors import GptjaxError, RunInterrupted, note, warn
from gptjax.eval.perplexity import evaluate_batches
from gptjax.model.transformer import count_params, flops_per_token
from gptjax.parallel.mesh import make_mesh
from gptjax.checkpoint import Checkpoints, checkpoint_meta
from gptjax.finetune.setup import attach_reference_logprobs, finetune_tokenizer, run_trainable_mask
from gptjax.train.metrics import MetricWriter, peak_flops_per_device, reproducibility_record
from gptjax.train.optim import schedule_horizon
from gptjax.train.state import TrainState
from gptjax.train.step import Step, build_step

LOCK_FILE = ".gptjax-train.lock"


def setup_compilation_cache(cfg: Config) -> None:
    setting = cfg.train.compilation_cache
    if setting == "off":
        return
    path = setting or str(cache_root(cfg.data) / "jax")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def with_vocab(cfg: Config, tok_vocab: int) -> Config:
    """The config with model.vocab_size taken from the tokenizer (or checked against it)."""
    m = cfg.model
    if m.vocab_size == 0:
        return dataclasses.replace(cfg, model=dataclasses.replace(m, vocab_size=tok_vocab))
    if m.vocab_size < tok_vocab:
        raise GptjaxError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's {tok_vocab}; "
                          f"set model.vocab_size=0 to take it from the data")
    return cfg


def with_train(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


class StopSignals:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (TPU preemption, Ctrl-C)."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---- opening a run ---------------------------------------------------------------------------------------------


def open_data(cfg: Config) -> tuple[Path, dict, tokenizers.Tokenizer]:
    """(prepared data dir, its manifest, its tokenizer), checked to agree with each other."""
    data_dir = resolve_data(cfg.data)
    manifest = store.read_manifest(data_dir)
    tok = tokenizers.load(data_dir / "tokenizer")
    if manifest["tokenizer"]["fingerprint"] != tokenizers.fingerprint(tok):
        raise GptjaxError(f"{data_dir}: tokenizer/ does not match the tokenizer its {store.MANIFEST} was prepared "
                          f"with (fingerprints differ); re-run `gptjax prepare` for this directory")
    return data_dir, manifest, tok


def resume_config(cfg: Config, saved: dict, step: int, workdir: Path) -> tuple[Config, list[str]]:
    """The config a resumed run uses, and the recorded changes ("changed at step N: key old -> new").

    Fields that may not change on resume are an error; the LR schedule keeps the horizon of the run that started
    unless train.schedule_steps is set explicitly."""
    saved_train = saved.get("train", {})
    if not cfg.train.schedule_steps:
        cfg = with_train(cfg, schedule_steps=saved_train.get("schedule_steps") or saved_train.get("steps", cfg.train.steps))
    changes = config_lib.resume_changes(saved, config_lib.to_dict(cfg))
    if changes.forbidden:
        key, old, new = changes.forbidden[0]
        more = f" and {len(changes.forbidden) - 1} more" if len(changes.forbidden) > 1 else ""
        raise GptjaxError(f"{workdir} holds a checkpoint (step {step}) of an incompatible config ({key}: {old!r} -> "
                          f"{new!r}{more}); use a new --workdir or the checkpoint's config ({workdir / 'config.json'})")
    notes = [f"changed at step {step}: {key} {old!r} -> {new!r}" for key, old, new in changes.recorded]
    if saved_train.get("steps") != cfg.train.steps:
        horizon = schedule_horizon(cfg.train)
        past = (f"; steps past {horizon} run at train.min_lr={cfg.train.min_lr}" if cfg.train.steps > horizon
                and cfg.train.schedule != "constant" else "")
        notes.append(f"train.steps {saved_train.get('steps')} -> {cfg.train.steps} at step {step}: the LR schedule keeps "
                     f"its horizon of {horizon} steps{past} (set train.schedule_steps to change it)")
    return cfg, notes


def init_params_from(source: Any, cfg: Config, tok: tokenizers.Tokenizer, step: Step, params) -> tuple[Any, dict]:
    """`params` (freshly initialised, placed) with every param of the `train.init_from` model `source` (an LM) put
    in, checked against the model; params it lacks must be new to this run (adapters, heads) and keep their init."""
    from gptjax.finetune.freeze import is_new_param

    path = cfg.train.init_from
    if source.tokenizer is None:
        note(f"train.init_from={path} has no tokenizer; its token ids are taken to mean what {tok.kind} (vocab "
             f"{tok.vocab_size}) of the data means")
    elif tokenizers.fingerprint(source.tokenizer) != tokenizers.fingerprint(tokenizers.base_tokenizer(tok)):
        raise GptjaxError(f"train.init_from={path} was trained with another tokenizer than the data's; prepare "
                          f"the data with its tokenizer (`gptjax prepare ... --tokenizer-dir {path}/tokenizer`)")
    have = dict((jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(source.params)[0])

    def take(key_path, fresh, abstract, sharding):
        key = jax.tree_util.keystr(key_path)
        if key not in have and is_new_param(key_path):
            return fresh
        if key in have and grown_vocabulary(key, have[key].shape, abstract.shape):
            return jax.device_put(with_source_rows(np.asarray(fresh), np.asarray(have[key]), key), sharding)
        if key not in have or tuple(have[key].shape) != tuple(abstract.shape):
            found = "missing" if key not in have else f"shape {tuple(have[key].shape)}"
            raise GptjaxError(f"train.init_from={path} does not fit this model: param {key} is {found}, the config "
                              f"needs {tuple(abstract.shape)}; use a model config equal to the source's")
        return jax.device_put(np.asarray(have[key], abstract.dtype), sharding)

    placed = jax.tree_util.tree_map_with_path(take, params, step.abstract_state.params, step.shardings.params)
    return placed, {"path": str(fileio.absolute(path)), "step": source.step}


VOCAB_AXIS = {"['embedding']": 0, "['lm_head']": 1}


def grown_vocabulary(key: str, source_shape, target_shape) -> bool:
    """True for a token embedding / output head that the run's larger vocabulary (added tokens) widens."""
    axis = VOCAB_AXIS.get(key)
    if axis is None or len(source_shape) != len(target_shape):
        return False
    others_equal = all(a == b for i, (a, b) in enumerate(zip(source_shape, target_shape)) if i != axis)
    return others_equal and source_shape[axis] < target_shape[axis]


def with_source_rows(fresh: np.ndarray, source: np.ndarray, key: str) -> np.ndarray:
    """`fresh` (the run's init) with the source's rows of its vocabulary copied in; added tokens keep their init."""
    out = fresh.copy()
    index = [slice(None)] * out.ndim
    index[VOCAB_AXIS[key]] = slice(0, source.shape[VOCAB_AXIS[key]])
    out[tuple(index)] = source
    return out


def load_init_source(cfg: Config):
    """The `train.init_from` model (an LM), or None; a path that holds no model is one clear error."""
    if not cfg.train.init_from:
        return None
    import gptjax

    try:
        return gptjax.load(cfg.train.init_from)
    except GptjaxError as error:
        raise GptjaxError(f"train.init_from={cfg.train.init_from}: {error}") from None


@dataclasses.dataclass
class RunBatches:
    """Where a run's batches come from: the training iterator, fixed validation batches, and (finetunes) the data."""

    iterator: Any
    val_batches: list
    val_bytes_per_token: float
    finetune: Any = None  # gptjax.finetune.batches.FinetuneData


def lm_batches(cfg: Config, data_dir: Path, manifest: dict) -> RunBatches:
    t = cfg.train
    iterator = loader.train_iterator(data_dir, cfg.model.block_size, t.batch_size, t.seed, max(t.steps, 1),
                                     jax.process_index(), jax.process_count(), cfg.data.prefetch_threads, data=cfg.data)
    val_batches = loader.eval_batches(data_dir, cfg.model.block_size, t.batch_size // t.grad_accum, t.eval_batches,
                                      data=cfg.data)
    val = manifest["splits"]["val"]
    return RunBatches(iterator, val_batches, val["n_bytes"] / max(val["n_tokens"], 1))


def finetune_batches(cfg: Config, data) -> RunBatches:
    from gptjax.finetune.batches import EpochStream, FinetuneStepBatches

    t = cfg.train
    batches = FinetuneStepBatches(EpochStream(data, t.seed), t.batch_size, jax.process_index(), jax.process_count())
    iterator = loader.step_iterator(batches, max(t.steps, 1), cfg.data.prefetch_threads)
    val_batches = data.eval_batches("val", t.batch_size // t.grad_accum)
    return RunBatches(iterator, val_batches, data.bytes_per_token, data)


def build_run_step(cfg: Config, mesh) -> tuple[Step, Any]:
    """The run's step with its finetune policy (trainable mask, a live DPO reference), and the mask (or None)."""
    from gptjax.model.transformer import abstract_params
    import flax.linen as nn

    mask = run_trainable_mask(cfg)
    live_reference = cfg.train.objective == "dpo" and cfg.finetune.reference == "live"
    reference = nn.unbox(abstract_params(cfg.model, cfg.train.seed)) if live_reference else None
    return build_step(cfg, mesh, trainable=mask, frozen_example=reference), mask


def initial_state(cfg: Config, step: Step, source, tok) -> tuple[TrainState, dict | None]:
    """The state a run starts from: fresh, with `train.init_from`'s params put in (and, for a live DPO reference, a
    copy of them as the frozen reference)."""
    state = step.init_state()
    if source is None:
        return state, None
    params, init_record = init_params_from(source, cfg, tok, step, state.params)
    state = state.replace(params=params)
    if step.shardings.frozen is not None:
        state = state.replace(frozen=jax.tree_util.tree_map(lambda x: x.copy(), params))
    return state, init_record


def _refresh_val(run_batches: RunBatches, step: Step) -> None:
    t = step.cfg.train
    run_batches.val_batches = run_batches.finetune.eval_batches("val", t.batch_size // t.grad_accum)


@dataclasses.dataclass
class Run:
    """Everything a training run holds open; built by `open_run`, closed by `close`."""

    cfg: Config
    workdir: Path
    data_dir: Path
    tokenizer: tokenizers.Tokenizer
    step: Step
    state: TrainState
    iterator: Any
    checkpoints: Checkpoints
    writer: MetricWriter
    meta: dict
    start_step: int
    val_batches: list
    val_bytes_per_token: float
    stop: StopSignals
    lock: Any = None
    summary: dict = dataclasses.field(default_factory=dict)
    last_batch: Any = None
    stopping: str | None = None  # the stop signal as seen at the current step (hooks and the loop agree on it)
    finetune: Any = None  # the finetuning data (gptjax.finetune.batches.FinetuneData), for finetune objectives

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    def evaluate(self, params) -> dict:
        """The objective's metrics over the fixed validation batches, with the sharded eval step: val loss / ppl /
        bpb for next-token objectives (SFT: over response tokens), val_<metric> (loss, acc, rewards, ...) per
        example otherwise."""
        frozen = self.state.frozen

        def sums_of(host_batch) -> dict:
            sums = self.step.evaluate(params, frozen, self.step.to_global(local_rows(host_batch)))
            return {k: float(v) for k, v in sums.items()}

        batches = (self.step.format_batch(b) for b in self.val_batches)
        if self.cfg.train.objective in ("lm", "sft"):
            def score(host_batch):
                sums = sums_of(host_batch)
                return sums["loss"], sums["weight"]

            result = evaluate_batches(score, batches, self.val_bytes_per_token)
            return {"val_loss": result["loss"], "val_ppl": result["ppl"], "val_bpb": result["bpb"]}
        return per_example_means([sums_of(b) for b in batches], "val_")

    def save(self, state: TrainState) -> None:
        self.checkpoints.save(state, {"grain": self.iterator.get_state(), "step": int(state.step)}, self.meta)
        self.writer.sync()  # the metrics up to a checkpoint are stored with it (gs://: uploaded)

    def close(self, failing: bool) -> None:
        """Closes sinks and waits for the pending save; while another error is in flight a save failure is only
        reported, so it never masks the original error."""
        self.stop.restore()
        self.writer.close()
        try:
            self.checkpoints.close()
        except GptjaxError as error:
            if not failing:
                raise
            warn(str(error))
        finally:
            if self.lock is not None:
                self.lock.__exit__(None, None, None)


def per_example_means(batch_sums: Sequence[dict], prefix: str) -> dict:
    """Summed metrics over batches divided by their total `weight` (examples), keys prefixed."""
    weight = max(sum(s["weight"] for s in batch_sums), 1e-9)
    return {f"{prefix}{k}": sum(s[k] for s in batch_sums) / weight for k in batch_sums[0] if k != "weight"}


def local_rows(global_batch):
    """This process's rows of a global host batch (an array or a dict of arrays)."""
    def rows(x):
        per = x.shape[0] // jax.process_count()
        return x[jax.process_index() * per:(jax.process_index() + 1) * per]

    return jax.tree_util.tree_map(rows, global_batch)


def _take_lock(workdir: Path):
    if jax.process_index() != 0:
        return None
    lock = fileio.exclusive_lock(workdir / LOCK_FILE, f"workdir {workdir} (another `gptjax train`)")
    lock.__enter__()
    return lock


def open_run(cfg: Config, workdir: str | Path) -> Run:
    """Sets up (or resumes) the run in `workdir`: validated config, data, state, step, checkpoints, sinks."""
    if fileio.is_remote(workdir):
        fileio.check_remote_root(str(workdir), "--workdir")
    workdir = fileio.as_path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise GptjaxError(f"--workdir {workdir} exists and is not a directory")
    setup_compilation_cache(cfg)
    source = load_init_source(cfg)
    finetune_data = None
    if cfg.train.objective in config_lib.FINETUNE_OBJECTIVES:
        from gptjax.finetune.batches import load_finetune_data

        tok, manifest = finetune_tokenizer(cfg, source), None
        cfg = with_vocab(cfg, tok.vocab_size)
        finetune_data = load_finetune_data(cfg, tok)
        data_dir = finetune_data.path
        if finetune_data.labels:  # recorded, so a loaded classifier names its classes
            cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, labels=finetune_data.labels))
    else:
        data_dir, manifest, tok = open_data(cfg)
        cfg = with_vocab(cfg, tok.vocab_size)
    config_lib.validate(cfg)
    mesh = make_mesh(cfg.mesh)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if (cfg.train.batch_size // cfg.train.grad_accum) % batch_shards:
        raise GptjaxError(f"the microbatch (train.batch_size / grad_accum = {cfg.train.batch_size // cfg.train.grad_accum})"
                          f" must divide by the data*fsdp mesh size {batch_shards}")
    fileio.makedirs(workdir)
    lock = _take_lock(workdir)
    try:
        return _open_locked(cfg, workdir, data_dir, manifest, tok, mesh, lock, source, finetune_data)
    except BaseException:
        if lock is not None:
            lock.__exit__(None, None, None)
        raise


def _open_locked(cfg, workdir, data_dir, manifest, tok, mesh, lock, source, finetune_data) -> Run:
    if jax.process_index() == 0:  # the only writer of those files; another process could delete one mid-write
        fileio.remove_orphaned_temp_files(workdir)
    checkpoints = Checkpoints(workdir, keep=cfg.train.keep_checkpoints, saved_mask=run_trainable_mask(cfg))
    try:
        return _open_with_checkpoints(cfg, workdir, data_dir, manifest, tok, mesh, lock, checkpoints, source,
                                      finetune_data)
    except BaseException:
        checkpoints.manager.close()
        raise


def _open_with_checkpoints(cfg, workdir, data_dir, manifest, tok, mesh, lock, checkpoints, source=None,
                           finetune_data=None) -> Run:
    previous_record = _read_record(workdir)
    changes: list[str] = list(previous_record.get("changes", []))
    restored = None
    if checkpoints.all_steps():
        newest = _newest_meta(checkpoints)
        if newest is not None:  # an incompatible config is refused before anything is restored into its shapes
            resume_config(cfg, newest[1]["config"], newest[0], workdir)
        # The step's shapes depend only on fields a resume may not change, so build it from the current config.
        probe, mask = build_run_step(cfg, mesh)
        base = initial_state(cfg, probe, source, tok)[0] if mask is not None or probe.shardings.frozen is not None else None
        restored = checkpoints.restore_latest(probe.abstract_state, probe.shardings,
                                              None if base is None else base.params)
        if restored is not None and base is not None and base.frozen is not None:
            restored = (restored[0].replace(frozen=base.frozen), *restored[1:])
    if restored is not None:
        state, data_state, saved_meta = restored
        if saved_meta.get("tokenizer") is None:
            raise GptjaxError(f"{workdir} holds a weights-only import without a tokenizer, so it cannot be trained on "
                              f"{data_dir}; import it again with `gptjax import ... --tokenizer-dir DIR`, or start a "
                              f"new --workdir with --config.train.init_from={workdir}")
        if saved_meta["tokenizer_fingerprint"] != tokenizers.fingerprint(tok):
            raise GptjaxError(f"{workdir} was trained with another tokenizer than {data_dir} holds; use a new --workdir")
        cfg, notes = resume_config(cfg, saved_meta["config"], int(state.step), workdir)
        changes += [n for n in notes if n.startswith("changed at")]
        if jax.process_index() == 0:
            for line in notes:
                note(line)
        init_record = previous_record.get("init_from")
    else:
        cfg = with_train(cfg, schedule_steps=schedule_horizon(cfg.train))
        state, data_state, init_record = None, None, None
    step, mask = build_run_step(cfg, mesh)
    if state is None:
        state, init_record = initial_state(cfg, step, source, tok)

    record = reproducibility_record(dict(mesh.shape))
    record["changes"] = changes
    if init_record:
        record["init_from"] = init_record
    meta = checkpoint_meta(cfg, tok, record, cfg.data.path if fileio.is_remote(cfg.data.path) else data_dir)
    if mask is not None:
        meta.update(saved_params="trainable", base=str(fileio.absolute(cfg.train.init_from)))
    if jax.process_index() == 0:
        fileio.write_json_atomic(workdir / "config.json", config_lib.to_dict(cfg))
        fileio.write_json_atomic(workdir / "record.json", record)
        tokenizers.save(tok, workdir / "tokenizer")

    batches = lm_batches(cfg, data_dir, manifest) if finetune_data is None else finetune_batches(cfg, finetune_data)
    if cfg.train.objective == "dpo" and cfg.finetune.reference == "precomputed":
        fresh = int(state.step) == 0
        reference = lambda: state.params if fresh else initial_state(cfg, step, source, tok)[0].params
        attach_reference_logprobs(batches.finetune, step, reference, workdir, cfg.train.batch_size // cfg.train.grad_accum)
        _refresh_val(batches, step)
    if data_state is not None:
        batches.iterator.set_state(data_state["grain"])
    return Run(cfg=cfg, workdir=workdir, data_dir=data_dir, tokenizer=tok, step=step, state=state,
               iterator=batches.iterator, checkpoints=checkpoints, writer=MetricWriter(workdir, cfg.train.tensorboard),
               meta=meta, start_step=int(state.step), val_batches=batches.val_batches,
               val_bytes_per_token=batches.val_bytes_per_token, stop=StopSignals(), lock=lock,
               finetune=batches.finetune)


def _newest_meta(checkpoints: Checkpoints) -> tuple[int, dict] | None:
    """(step, meta) of the newest checkpoint whose metadata reads (restoring reports the unreadable ones)."""
    for step in sorted(checkpoints.all_steps(), reverse=True):
        try:
            return step, checkpoints.read_meta(step)
        except Exception:
            continue
    return None


def _read_record(workdir: Path) -> dict:
    path = workdir / "record.json"
    if not path.is_file():
        return {}
    return fileio.read_json(path, "run record", f"move {path} aside to start a fresh record")


# ---- hooks -----------------------------------------------------------------------------------------------------


class Hook(Protocol):
    """Called after step `done` was dispatched, when `due`: reads the state, writes files, never changes the state."""

    def due(self, run: Run, done: int) -> bool: ...

    def __call__(self, run: Run, done: int, state: TrainState) -> None: ...


class MetricsLog:
    """Reads each step's metrics one step late (so the device never idles), checks them, logs and shows them."""

    def __init__(self, run: Run, show_progress: bool):
        cfg = run.cfg
        self.run = run
        self.tokens_per_step = cfg.train.batch_size * cfg.model.block_size
        self.flops_per_step = flops_per_token(cfg.model, cfg.model.block_size) * self.tokens_per_step
        self.peak = peak_flops_per_device(cfg.train.peak_flops) * jax.device_count()
        self.bar = tqdm(total=cfg.train.steps, initial=run.start_step, desc="train", unit="step", dynamic_ncols=True,
                        disable=not show_progress or not run.is_main)
        self.pending: tuple[int, dict] | None = None
        self.last_time: float | None = None
        self.step_seconds: float | None = None

    def push(self, step: int, metrics: dict) -> None:
        self.flush()
        self.pending = (step, metrics)

    def flush(self) -> None:
        if self.pending is not None:
            step, metrics = self.pending
            self.pending = None
            self._process(step, metrics)

    def _process(self, step: int, metrics: dict) -> None:
        run, t = self.run, self.run.cfg.train
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
            raise non_finite_error(run, f"loss is {values['loss']} (grad norm {values['grad_norm']}) at step {step + 1}")
        now = time.perf_counter()
        if self.last_time is not None:
            dt = now - self.last_time
            values["step_s"] = dt  # this step's wall time (a hook's, e.g. an eval's, is in the step after it)
            self.step_seconds = dt if self.step_seconds is None else 0.9 * self.step_seconds + 0.1 * dt
        self.last_time = now
        postfix = {"loss": f"{values['loss']:.4f}"}
        if self.step_seconds:
            values["tokens_per_s"] = self.tokens_per_step / self.step_seconds
            postfix["tok/s"] = f"{values['tokens_per_s']:.0f}"
            if self.peak:
                values["mfu"] = self.flops_per_step / self.step_seconds / self.peak
                postfix["mfu"] = f"{100 * values['mfu']:.1f}%"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)
        run.summary.update(values)
        if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
            run.writer.write(step + 1, values)

    def close(self) -> None:
        self.bar.close()


def non_finite_error(run: Run, what: str) -> GptjaxError:
    last = run.checkpoints.latest_step()
    intact = (f"the last good checkpoint (step {last}) is intact in {run.workdir}" if last is not None
              else f"no checkpoint was written to {run.workdir}")
    return GptjaxError(f"{what}; stopped, {intact}. Resume it with a lower learning rate, e.g. the same command with "
                       f"--config.train.lr={run.cfg.train.lr / 2:g} (or raise train.warmup_steps / set train.grad_clip); "
                       f"the change is recorded in record.json")


@dataclasses.dataclass
class EvalHook:
    """Validation loss every `train.eval_every` steps and at the end."""

    def due(self, run: Run, done: int) -> bool:
        return done % run.cfg.train.eval_every == 0 or done == run.cfg.train.steps

    def __call__(self, run: Run, done: int, state: TrainState) -> None:
        result = run.evaluate(state.params)
        run.summary.update(result)
        run.writer.write(done, result)
        if run.is_main:
            tqdm.write(f"step {done}: {format_eval(result)}")


def format_eval(result: dict) -> str:
    """'val loss 1.2345, ppl 3.44, bpb 0.5000' / 'val loss 0.1234, acc 0.9600, ...' for the terminal."""
    parts = [f"{k.removeprefix('val_').replace('_', ' ')} {v:.{2 if k == 'val_ppl' else 4}f}" for k, v in result.items()]
    return "val " + ", ".join(parts)


@dataclasses.dataclass
class CheckpointHook:
    """Saves every `train.checkpoint_every` steps, at the end and on a stop signal — only params that are finite and
    give a finite loss and gradient on the batch they were just trained on, so 'the last good checkpoint' can
    always be resumed (with a lower learning rate)."""

    def due(self, run: Run, done: int) -> bool:
        t = run.cfg.train
        return done % t.checkpoint_every == 0 or done == t.steps or run.stopping is not None

    def __call__(self, run: Run, done: int, state: TrainState) -> None:
        if not run.step.healthy(state.params, state.frozen, run.last_batch):
            raise non_finite_error(run, f"the params after step {done} are not finite or give a non-finite loss or "
                                        f"gradient, so they were not saved")
        run.save(state)


def task_specs(entries: Sequence[str]) -> list[tuple[str, int | None]]:
    """("hellaswag", 200) pairs from `train.eval_tasks` entries "TASK[:LIMIT]"."""
    specs = []
    for entry in entries:
        name, _, limit = entry.partition(":")
        if limit and not (limit.isdigit() and int(limit) > 0):
            raise GptjaxError(f"train.eval_tasks entry {entry!r}: LIMIT must be a positive integer (TASK or TASK:LIMIT)")
        specs.append((name.strip(), int(limit) if limit else None))
    return specs


class TaskEvalHook(EvalHook):
    """Downstream tasks (`train.eval_tasks`) scored beside the val loss (same cadence), logged as `TASK/METRIC`.

    The tasks' data is read once, when the run opens, so a missing file fails before any training step."""

    def __init__(self, cfg: Config):
        import os

        from gptjax.eval.tasks import load_task

        data_dir = cfg.train.eval_data or os.environ.get("GPTJAX_EVAL_DATA", "")
        if not data_dir:
            raise GptjaxError("train.eval_tasks needs the tasks' data: set train.eval_data=DIR or GPTJAX_EVAL_DATA "
                              "(a directory laid out as shared/data: hellaswag/, mmlu/, lambada/, ...)")
        self.tasks = [load_task(name, Path(data_dir), 0, limit) for name, limit in task_specs(cfg.train.eval_tasks)]

    def __call__(self, run: Run, done: int, state: TrainState) -> None:
        from gptjax.api import LM
        from gptjax.eval.suite import run_task

        lm = LM(run.cfg, state.params, run.tokenizer, step=done)
        values = {}
        for task in self.tasks:
            metrics = run_task(lm, task, batch_size=run.cfg.train.batch_size, bootstrap_iters=1000, progress=False).metrics
            values.update({f"{task.name}/{key}": float(value) for key, value in metrics.items()
                           if isinstance(value, (int, float)) and not isinstance(value, bool)
                           and key not in ("n", "shots", "truncated", "too_long", "skipped")})
        run.summary.update(values)
        run.writer.write(done, values)
        if run.is_main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k.endswith(("/acc", "/ppl", "perplexity")))
            tqdm.write(f"step {done}: {shown}")


@dataclasses.dataclass
class SamplesHook:
    """At the end of an SFT / DPO run: greedy responses to the first `finetune.samples` held-out (test) prompts,
    written beside the reference responses to the workdir's samples.jsonl."""

    def due(self, run: Run, done: int) -> bool:
        return done == run.cfg.train.steps and run.finetune is not None and bool(run.finetune.prompts.get("test"))

    def __call__(self, run: Run, done: int, state: TrainState) -> None:
        from gptjax.api import LM

        f, block = run.cfg.finetune, run.cfg.model.block_size
        lm = LM(run.cfg, state.params, run.tokenizer, step=done)
        prompts = [ids[-max(block - f.max_new_tokens, 1):] for ids in run.finetune.prompts["test"]]
        responses = lm.generate_ids(prompts, max_new_tokens=min(f.max_new_tokens, block - 1), temperature=0.0)
        lines = [json.dumps({"prompt": run.tokenizer.decode(p[1:]), "reference": ref,
                             "response": run.tokenizer.decode(r), "step": done})
                 for p, ref, r in zip(run.finetune.prompts["test"], run.finetune.references["test"], responses)]
        if run.is_main:
            fileio.write_text_atomic(run.workdir / "samples.jsonl", "".join(line + "\n" for line in lines))
            tqdm.write(f"step {done}: {len(lines)} held-out responses written to {run.workdir / 'samples.jsonl'}")


DEFAULT_HOOKS: tuple[Hook, ...] = (EvalHook(), CheckpointHook())


def agreed_stop(run: Run, done: int) -> str | None:
    """The stop signal every process acts on at step `done`: with several processes they agree (one small
    all-gather every `train.log_every` steps and at the end), so all of them take the collective save together."""
    if jax.process_count() == 1:
        return run.stop.received
    t = run.cfg.train
    if done % t.log_every and done != t.steps:
        return None
    from jax.experimental import multihost_utils

    flags = np.asarray(multihost_utils.process_allgather(np.int32(run.stop.received is not None)))
    stopped = np.flatnonzero(flags)
    return f"a signal to process {int(stopped[0])}" if stopped.size else None


def default_hooks(cfg: Config) -> tuple[Hook, ...]:
    hooks = (*DEFAULT_HOOKS, TaskEvalHook(cfg)) if cfg.train.eval_tasks else DEFAULT_HOOKS
    return (*hooks, SamplesHook()) if cfg.train.objective in ("sft", "dpo") else hooks


def evaluate_start(run: Run) -> None:
    """A finetune's validation metrics before its first step, logged at step 0 (the "before" of before/after)."""
    result = run.evaluate(run.state.params)
    run.summary.update({f"start_{k}": v for k, v in result.items()})
    run.writer.write(0, result)
    if run.is_main:
        tqdm.write(f"step 0: {format_eval(result)}")


def fit(run: Run, hooks: Sequence[Hook], show_progress: bool = True) -> dict:
    """Steps `run` from its start to `train.steps`, calling each hook when it is due, in order."""
    t = run.cfg.train
    log = MetricsLog(run, show_progress)
    if run.is_main:
        where = f"resuming from step {run.start_step}" if run.start_step else "starting at step 0"
        tqdm.write(f"gptjax: {count_params(run.state.params) / 1e6:.2f}M params, mesh {dict(run.step.mesh.shape)}, "
                   f"{jax.device_count()} {jax.devices()[0].platform} devices, {log.tokens_per_step} tokens/step, "
                   f"{where} of {t.steps}", file=sys.stderr)
    if run.start_step == 0 and run.finetune is not None:
        evaluate_start(run)
    state = run.state
    try:
        for step in range(run.start_step, t.steps):
            batch = run.step.to_global(run.step.format_batch(next(run.iterator)))
            state, metrics = run.step.train(state, batch)
            run.state, run.last_batch = state, batch
            log.push(step, metrics)
            done = step + 1
            run.stopping = agreed_stop(run, done)
            due = [hook for hook in hooks if hook.due(run, done)]
            if due:
                log.flush()
            for hook in due:
                hook(run, done, state)
            if run.stopping:
                run.checkpoints.wait()
                if run.checkpoints.latest_step() != done:
                    raise GptjaxError(f"stopped by {run.stopping} at step {done} but its checkpoint did not "
                                      f"complete; the latest checkpoint is step {run.checkpoints.latest_step()}")
                raise RunInterrupted(f"stopped by {run.stopping} at step {done}; checkpoint saved in "
                                     f"{run.workdir}; run the same command to resume")
        log.flush()
        if run.start_step >= t.steps and run.start_step > 0:
            run.summary.update(run.evaluate(state.params))
    finally:
        log.close()
    run.summary["step"] = int(state.step)
    run.summary["params"] = count_params(state.params)
    return run.summary


def train(cfg: Config, workdir: str | Path, show_progress: bool = True, hooks: Sequence[Hook] = ()) -> dict:
    """Trains (or resumes) a run in `workdir`; returns the final metrics. `hooks` run after the default ones."""
    run = open_run(cfg, workdir)
    failing = True
    try:
        summary = fit(run, (*default_hooks(run.cfg), *hooks), show_progress)
        failing = False
        return summary
    finally:
        run.close(failing)
