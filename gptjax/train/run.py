"""A run's workdir: opening one to train in, new or resumed (`open_run` -> `Run`: validated config, data,
tokenizer, mesh, the step from `build_step`, restored state, checkpoints, metric sinks, the workdir lock), and writing
a new one from given params (`write_workdir`, for imports)."""
from __future__ import annotations

import dataclasses
import signal
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from gptjax import config as config_lib
from gptjax import fileio
from gptjax.checkpoint import CHECKPOINT_DIR, Checkpoints, checkpoint_meta
from gptjax.config import Config
from gptjax.data import loader, store
from gptjax.data import tokenizer as tokenizers
from gptjax.data.sources import cache_root, mixture_entries
from gptjax.data.tokenizer import with_vocab
from gptjax.errors import GptjaxError, note, warn
from gptjax.eval.perplexity import bytes_per_token, evaluate_batches
from gptjax.export import (
    CONFIG_FILE,
    EXPERIMENT_FILE,
    RECORD_FILE,
    TOKENIZER_DIR,
    check_param_shapes,
    expected_param_shapes,
    flatten_params,
    write_json,
)
from gptjax.fileio import staged_directory
from gptjax.finetune.setup import attach_reference_logprobs, finetune_tokenizer, run_trainable_mask
from gptjax.parallel import distributed
from gptjax.parallel.mesh import make_mesh
from gptjax.prepare.resolve import open_data
from gptjax.train.metrics import MetricWriter, reproducibility_record
from gptjax.train.optim import schedule_horizon
from gptjax.train.state import TrainState
from gptjax.train.step import Step, build_step
from gptjax.train.tracker import open_tracker


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


LOCK_FILE = ".gptjax-train.lock"
# FIXED fields that decide the optimizer state's structure: changing one on resume gets its own refusal
OPTIMIZER_STATE_KEYS = ("train.optimizer", "train.adafactor_factor_min_dim")


def setup_compilation_cache(cfg: Config) -> None:
    setting = cfg.train.compilation_cache
    if setting == "off":
        return
    path = setting or str(cache_root(cfg.data) / "jax")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


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


def resume_config(cfg: Config, saved: dict, step: int, workdir: Path) -> tuple[Config, list[str]]:
    """The config a resumed run uses, and the recorded changes ("changed at step N: key old -> new").

    Fields that may not change on resume are an error; the LR schedule keeps the horizon of the run that started
    unless train.schedule_steps is set explicitly."""
    saved_train = saved.get("train", {})
    if not cfg.train.schedule_steps:
        cfg = with_train(cfg,
                         schedule_steps=saved_train.get("schedule_steps") or saved_train.get("steps", cfg.train.steps))
    changes = config_lib.resume_changes(saved, config_lib.to_dict(cfg))
    for key, old, new in changes.forbidden:
        if key in OPTIMIZER_STATE_KEYS:
            raise GptjaxError(f"{workdir} holds a checkpoint (step {step}) trained with {key}={old}: its optimizer "
                              f"state would not match {key}={new}; resume with {key}={old} or use a new --workdir")
    if changes.forbidden:
        key, old, new = changes.forbidden[0]
        more = f" and {len(changes.forbidden) - 1} more" if len(changes.forbidden) > 1 else ""
        raise GptjaxError(f"{workdir} holds a checkpoint (step {step}) of an incompatible config ({key}: {old!r} -> "
                          f"{new!r}{more}); use a new --workdir or the checkpoint's config ({workdir / 'config.json'})")
    config_lib.check_trained_mixture(saved.get("data", {}), cfg.data, step)
    notes = [f"changed at step {step}: {key} {old!r} -> {new!r}" for key, old, new in changes.recorded]
    if saved_train.get("steps") != cfg.train.steps:
        horizon = schedule_horizon(cfg.train)
        past = (f"; steps past {horizon} run at train.min_lr={cfg.train.min_lr}" if cfg.train.steps > horizon
                and cfg.train.schedule not in ("constant", "inverse_sqrt") else "")
        notes.append(f"train.steps {saved_train.get('steps')} -> {cfg.train.steps} at step {step}: "
                     f"the LR schedule keeps "
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


@dataclasses.dataclass(frozen=True)
class DomainVal:
    """One `data.mixture` component's fixed validation batches, reported as val_loss/<name>, val_ppl/..., val_bpb/..."""

    name: str
    batches: list
    bytes_per_token: float


@dataclasses.dataclass
class RunBatches:
    """Where a run's batches come from: the training iterator, fixed validation batches (overall and, with a
    mixture, per component), and (finetunes) the data."""

    iterator: Any
    val_batches: list
    val_bytes_per_token: float
    finetune: Any = None  # gptjax.finetune.batches.FinetuneData
    domain_vals: tuple[DomainVal, ...] = ()


def lm_batches(cfg: Config, data_dir: Path, manifest: dict) -> RunBatches:
    t = cfg.train
    iterator = loader.train_iterator(data_dir, cfg.model.block_size, t.batch_size, t.seed, max(t.steps, 1),
                                     jax.process_index(), jax.process_count(), cfg.data.prefetch_threads, data=cfg.data)
    val_batches = loader.eval_batches(data_dir, cfg.model.block_size, t.batch_size // t.grad_accum, t.eval_batches,
                                      data=cfg.data)
    val = manifest["splits"]["val"]
    per_byte = mixture_bytes_per_token(cfg) if cfg.data.mixture else val["n_bytes"] / max(val["n_tokens"], 1)
    return RunBatches(iterator, val_batches, per_byte, domain_vals=domain_vals(cfg))


def mixture_bytes_per_token(cfg: Config) -> float:
    """Bytes per token of a mixture's overall validation batches: each component's own, weighted by the rows it
    gives them (data.mixture's weights, as `loader.eval_batches` draws them)."""
    t = cfg.train
    rows = loader.rows_per_component(t.eval_batches, t.batch_size // t.grad_accum,
                                     config_lib.mixture_schedule(cfg.data.mixture))
    per_token = [bytes_per_token(path, "val") for path, _ in mixture_entries(cfg.data)]
    return sum(n * b for n, b in zip(rows, per_token)) / max(sum(rows), 1)


def domain_vals(cfg: Config) -> tuple[DomainVal, ...]:
    """With `data.mixture`, each component's own validation batches (as many as the overall ones, train.eval_batches)
    and its bytes per token; otherwise none."""
    if not cfg.data.mixture:
        return ()
    t = cfg.train
    alone = dataclasses.replace(cfg.data, mixture=(), mixture_stages=())
    paths = [path for path, _ in mixture_entries(cfg.data)]
    return tuple(DomainVal(name, loader.eval_batches(path, cfg.model.block_size, t.batch_size // t.grad_accum,
                                                     t.eval_batches, data=alone), bytes_per_token(path, "val"))
                 for name, path in zip(config_lib.mixture_names(cfg.data.mixture), paths))


def finetune_batches(cfg: Config, data) -> RunBatches:
    from gptjax.finetune.batches import EpochStream, FinetuneStepBatches

    t = cfg.train
    batches = FinetuneStepBatches(EpochStream(data, t.seed), t.batch_size, jax.process_index(), jax.process_count())
    iterator = loader.step_iterator(batches, max(t.steps, 1), cfg.data.prefetch_threads)
    val_batches = data.eval_batches("val", t.batch_size // t.grad_accum)
    return RunBatches(iterator, val_batches, data.bytes_per_token, data)


def build_run_step(cfg: Config, mesh) -> tuple[Step, Any]:
    """The run's step with its finetune policy (trainable mask, a live DPO reference), and the mask (or None)."""
    import flax.linen as nn

    from gptjax.model.transformer import abstract_params

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
    domain_vals: tuple[DomainVal, ...] = ()  # with data.mixture: each component's validation batches

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    def evaluate(self, params) -> dict:
        """The objective's metrics over the fixed validation batches, with the sharded eval step: val loss / ppl /
        bpb for next-token objectives (SFT: over response tokens), and with a mixture those of each component
        (val_loss/<name>, ...); val_<metric> (loss, acc, rewards, ...) per example otherwise."""
        frozen = self.state.frozen

        def sums_of(host_batch) -> dict:
            sums = self.step.evaluate(params, frozen, self.step.to_global(local_rows(host_batch)))
            return {k: float(v) for k, v in sums.items()}

        if self.cfg.train.objective in ("lm", "sft"):
            def score(host_batch):
                sums = sums_of(host_batch)
                return sums["loss"], sums["weight"]

            def metrics(host_batches: list, per_byte: float, suffix: str = "") -> dict:
                result = evaluate_batches(score, (self.step.format_batch(b) for b in host_batches), per_byte)
                return {f"val_{key}{suffix}": result[key] for key in ("loss", "ppl", "bpb")}

            result = metrics(self.val_batches, self.val_bytes_per_token)
            for domain in self.domain_vals:
                result.update(metrics(domain.batches, domain.bytes_per_token, f"/{domain.name}"))
            return result
        return per_example_means([sums_of(self.step.format_batch(b)) for b in self.val_batches], "val_")

    def evaluate_state(self, state: TrainState) -> dict:
        """`evaluate` of the params and, when the state keeps one, of their moving average (keys suffixed _ema:
        val_loss_ema, val_loss_ema/<name>, ...)."""
        result = self.evaluate(state.params)
        if state.ema_params is not None:
            result.update({ema_key(key): value for key, value in self.evaluate(state.ema_params).items()})
        return result

    def save(self, state: TrainState) -> None:
        self.checkpoints.save(state, {"grain": self.iterator.get_state(), "step": int(state.step)}, self.meta)
        self.writer.sync()  # the metrics up to a checkpoint are stored with it (gs://: uploaded)

    def close(self, failing: bool) -> None:
        """Restores the signal handlers, closes the metric sinks, waits for the pending save and releases the lock,
        each whatever the others do. While another error is in flight a failure here is only reported, so it never
        masks the original error; otherwise the first one is raised, as one GptjaxError."""
        problems: list[GptjaxError] = []
        for what, close in (("signal handlers", self.stop.restore), ("metrics", self.writer.close),
                            ("checkpoints", self.checkpoints.close)):
            try:
                close()
            except GptjaxError as error:
                problems.append(error)
            except OSError as error:
                problems.append(GptjaxError(f"closing the run's {what} in {self.workdir} failed ({error}); the "
                                            f"checkpoints written before are intact: run the same command to resume"))
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
        for problem in problems[0 if failing else 1:]:
            warn(str(problem))
        if problems and not failing:
            raise problems[0]


def ema_key(key: str) -> str:
    """The moving average's metric key: val_loss -> val_loss_ema, val_loss/web -> val_loss_ema/web."""
    head, sep, domain = key.partition("/")
    return f"{head}_ema{sep}{domain}"


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


@dataclasses.dataclass(frozen=True)
class RunInputs:
    """What a run is opened from, settled before the workdir is locked: the resolved config (vocabulary from the
    tokenizer), where it trains, its data, tokenizer and mesh, the `train.init_from` model and finetuning data."""

    cfg: Config
    workdir: Path
    data_dir: Path
    manifest: dict | None  # the prepared data's manifest (None for finetuning records)
    tokenizer: tokenizers.Tokenizer
    mesh: Any
    source: Any = None  # the train.init_from LM, if any
    finetune_data: Any = None  # gptjax.finetune.batches.FinetuneData, for finetuning objectives
    allow_data_change: bool = False  # resume on data other than the checkpoints were trained on (recorded)

    @property
    def data_identity(self) -> str | None:
        return None if self.manifest is None else store.manifest_identity(self.manifest)


def open_run(cfg: Config, workdir: str | Path, allow_data_change: bool = False) -> Run:
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
    data_identity = store.manifest_identity(manifest) if manifest is not None else str(data_dir)
    distributed.check_same({"workdir": str(fileio.absolute(workdir)), "data": data_identity})
    mesh = make_mesh(cfg.mesh)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if (cfg.train.batch_size // cfg.train.grad_accum) % batch_shards:
        raise GptjaxError(f"the microbatch (train.batch_size / grad_accum = "
                          f"{cfg.train.batch_size // cfg.train.grad_accum})"
                          f" must divide by the data*fsdp mesh size {batch_shards}")
    fileio.makedirs(workdir)
    inputs = RunInputs(cfg, workdir, data_dir, manifest, tok, mesh, source, finetune_data, allow_data_change)
    lock = _take_lock(workdir)
    try:
        return _open_locked(inputs, lock)
    except BaseException:
        if lock is not None:
            lock.__exit__(None, None, None)
        raise


def _open_locked(inputs: RunInputs, lock) -> Run:
    if jax.process_index() == 0:  # the only writer of those files; another process could delete one mid-write
        fileio.remove_orphaned_temp_files(inputs.workdir)
    # Locally checkpoints/ is created before record.json is first written (an object store has no empty folders).
    workdir_is_local = not fileio.is_remote(inputs.workdir)
    if workdir_is_local and (inputs.workdir / RECORD_FILE).exists() and not (inputs.workdir / CHECKPOINT_DIR).exists():
        raise GptjaxError(f"{inputs.workdir} holds a run ({RECORD_FILE}) whose {CHECKPOINT_DIR}/ is gone, so it would "
                          f"start over from step 0; restore {inputs.workdir / CHECKPOINT_DIR}, or train in a new "
                          f"--workdir (nothing was changed)")
    checkpoints = Checkpoints(inputs.workdir, keep=inputs.cfg.train.keep_checkpoints,
                              saved_mask=run_trainable_mask(inputs.cfg))
    try:
        return _open_with_checkpoints(inputs, lock, checkpoints)
    except BaseException:
        checkpoints.manager.close()
        raise


def _open_with_checkpoints(inputs: RunInputs, lock, checkpoints: Checkpoints) -> Run:
    cfg, workdir, data_dir, tok, mesh, source = (inputs.cfg, inputs.workdir, inputs.data_dir, inputs.tokenizer,
                                                 inputs.mesh, inputs.source)
    previous_record = _read_record(workdir)
    changes: list[str] = list(previous_record.get("changes", []))
    restored = None
    # Restoring is collective: every process must take the same branch, from the same list of steps.
    distributed.check_same({"list of checkpoints": ",".join(map(str, sorted(checkpoints.all_steps())))})
    if checkpoints.all_steps():
        newest = _newest_meta(checkpoints)
        if newest is not None:  # an incompatible config or other data is refused before anything is restored
            resume_config(cfg, newest[1]["config"], newest[0], workdir)
            data_change = _data_change(inputs, newest[1], newest[0])
            if data_change:
                changes.append(data_change)
                if jax.process_index() == 0:
                    note(data_change)
        # The step's shapes depend only on fields a resume may not change, so build it from the current config.
        probe, mask = build_run_step(cfg, mesh)
        base = (initial_state(cfg, probe, source, tok)[0]
                if mask is not None or probe.shardings.frozen is not None else None)
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
            raise GptjaxError(f"{workdir} was trained with another tokenizer than {data_dir} holds; "
                              f"use a new --workdir")
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
    meta = checkpoint_meta(cfg, tok, record, cfg.data.path if fileio.is_remote(cfg.data.path) else data_dir,
                           inputs.data_identity)
    if mask is not None:
        meta.update(saved_params="trainable", base=str(fileio.absolute(cfg.train.init_from)))
    if jax.process_index() == 0:
        fileio.write_json_atomic(workdir / "config.json", config_lib.to_dict(cfg))
        fileio.write_json_atomic(workdir / RECORD_FILE, record)
        tokenizers.save(tok, workdir / "tokenizer")

    batches = (lm_batches(cfg, data_dir, inputs.manifest) if inputs.finetune_data is None
               else finetune_batches(cfg, inputs.finetune_data))
    if cfg.train.objective == "dpo" and cfg.finetune.reference == "precomputed":
        fresh = int(state.step) == 0
        reference = lambda: state.params if fresh else initial_state(cfg, step, source, tok)[0].params
        attach_reference_logprobs(batches.finetune, step, reference, workdir,
                                  cfg.train.batch_size // cfg.train.grad_accum)
        _refresh_val(batches, step)
    if data_state is not None:
        batches.iterator.set_state(data_state["grain"])
    return Run(cfg=cfg, workdir=workdir, data_dir=data_dir, tokenizer=tok, step=step, state=state,
               iterator=batches.iterator, checkpoints=checkpoints,
               writer=MetricWriter(workdir, cfg.train.tensorboard, int(state.step), open_tracker(cfg, workdir)),
               meta=meta, start_step=int(state.step), val_batches=batches.val_batches,
               val_bytes_per_token=batches.val_bytes_per_token, stop=StopSignals(), lock=lock,
               finetune=batches.finetune, domain_vals=batches.domain_vals)


def _data_change(inputs: RunInputs, saved_meta: dict, step: int) -> str | None:
    """None when the run resumes on the data its checkpoints were trained on; the recorded change where the user
    allowed other data (--allow-data-change); otherwise a GptjaxError."""
    saved, current = saved_meta.get("data_identity"), inputs.data_identity
    if saved is None or current is None or saved == current:
        return None
    if not inputs.allow_data_change:
        raise GptjaxError(f"{inputs.data_dir} is not the data {inputs.workdir} was trained on up to step {step} "
                          f"(it was prepared again or replaced: its manifest differs); resume on the same data, train "
                          f"in a new --workdir, or pass --allow-data-change to continue on this data (recorded in "
                          f"record.json)")
    return f"changed at step {step}: data {saved[:12]} -> {current[:12]} ({inputs.data_dir}, --allow-data-change)"


def _newest_meta(checkpoints: Checkpoints) -> tuple[int, dict] | None:
    """(step, meta) of the newest checkpoint whose metadata reads (restoring reports the unreadable ones)."""
    for step in sorted(checkpoints.all_steps(), reverse=True):
        try:
            return step, checkpoints.read_meta(step)
        except Exception:
            continue
    return None


def _read_record(workdir: Path) -> dict:
    path = workdir / RECORD_FILE
    if not path.is_file():
        return {}
    return fileio.read_json(path, "run record", f"move {path} aside to start a fresh record")
