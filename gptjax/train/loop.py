"""The training loop: the one place with I/O. Resumes exactly from the latest checkpoint in the workdir."""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import threading
import time
from pathlib import Path

import jax
from tqdm.auto import tqdm

from gptjax import config as config_lib
from gptjax.config import Config
from gptjax.data import loader, store
from gptjax.data import tokenizer as tokenizers
from gptjax.data.prepare import cache_root, resolve_data
from gptjax.errors import GptjaxError, RunInterrupted
from gptjax.model.transformer import Transformer, count_params, flops_per_token
from gptjax.parallel.mesh import make_mesh
from gptjax.parallel.rules import batch_sharding, use_rules
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.metrics import MetricWriter, peak_flops_per_device, reproducibility_record
from gptjax.train.optim import make_optimizer
from gptjax.train.state import create_state, state_shardings
from gptjax.train.step import eval_step, train_step

# Fields a resumed run may change; any other difference from the checkpoint's config is an error.
RESUMABLE_KEYS = {
    "name", "train.steps", "train.eval_every", "train.eval_batches", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.tensorboard", "train.compilation_cache", "train.peak_flops",
    "data.prefetch_threads", "data.cache_dir", "train.cpu_devices", "mesh.data", "mesh.fsdp", "mesh.tensor",
}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' for every non-resumable field that differs."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in RESUMABLE_KEYS and a.get(k) != b.get(k)]


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


def _check_workdir(workdir: Path) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise GptjaxError(f"--workdir {workdir} exists and is not a directory")


def train(cfg: Config, workdir: str | Path, show_progress: bool = True) -> dict:
    """Trains (or resumes) a run in `workdir`; returns the final metrics."""
    workdir = Path(workdir)
    _check_workdir(workdir)
    setup_compilation_cache(cfg)
    data_dir = resolve_data(cfg.data)
    manifest = store.read_manifest(data_dir)
    tok = tokenizers.load(data_dir / "tokenizer")
    cfg = with_vocab(cfg, tok.vocab_size)
    config_lib.validate(cfg)
    t = cfg.train
    mesh = make_mesh(cfg.mesh)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if (t.batch_size // t.grad_accum) % batch_shards:
        raise GptjaxError(f"the microbatch (train.batch_size / grad_accum = {t.batch_size // t.grad_accum}) must divide "
                          f"by the data*fsdp mesh size {batch_shards}")

    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpoints(workdir, keep=t.keep_checkpoints)
    latest = checkpoints.latest_step()
    if latest is not None:
        saved = checkpoints.read_meta(latest)
        diffs = config_differences(saved["config"], config_lib.to_dict(cfg))
        if diffs:
            checkpoints.close()
            raise GptjaxError(f"{workdir} holds a checkpoint (step {latest}) of an incompatible config ({diffs[0]}"
                              f"{f' and {len(diffs) - 1} more' if len(diffs) > 1 else ''}); use a new --workdir "
                              f"or the checkpoint's config ({workdir / 'config.json'})")
        if saved["tokenizer_fingerprint"] != tokenizers.fingerprint(tok):
            checkpoints.close()
            raise GptjaxError(f"{workdir} was trained with another tokenizer than {data_dir} holds; use a new --workdir")

    model = Transformer(cfg.model)
    optimizer = make_optimizer(t)
    shardings, abstract_state = state_shardings(model, optimizer, cfg, mesh)
    record = reproducibility_record(dict(mesh.shape))
    meta = {"config": config_lib.to_dict(cfg), "tokenizer": tokenizers.to_json_dict(tok),
            "tokenizer_fingerprint": tokenizers.fingerprint(tok), "record": record, "data_dir": str(data_dir)}
    if jax.process_index() == 0:
        store.write_json_atomic(workdir / "config.json", config_lib.to_dict(cfg))
        store.write_json_atomic(workdir / "record.json", record)
        tokenizers.save(tok, workdir / "tokenizer")

    iterator = loader.train_iterator(data_dir, cfg.model.block_size, t.batch_size, t.seed, max(t.steps, 1),
                                     jax.process_index(), jax.process_count(), cfg.data.prefetch_threads, data=cfg.data)
    if latest is not None:
        state, data_state = checkpoints.restore(latest, abstract_state, shardings)
        iterator.set_state(data_state["grain"])
    else:
        state = create_state(model, optimizer, cfg, mesh, shardings)
    start_step = int(state.step)

    in_sharding = batch_sharding(mesh)
    with use_rules(mesh):
        train_fn = jax.jit(functools.partial(train_step, model=model, optimizer=optimizer, cfg=cfg),
                           in_shardings=(shardings, in_sharding), out_shardings=(shardings, None), donate_argnums=0)
        eval_fn = jax.jit(functools.partial(eval_step, model=model), in_shardings=(shardings.params, in_sharding))
    val_batches = loader.eval_batches(data_dir, cfg.model.block_size, t.batch_size // t.grad_accum, t.eval_batches,
                                      data=cfg.data)
    val_tokens_per_byte = manifest["splits"]["val"]["n_tokens"] / max(manifest["splits"]["val"]["n_bytes"], 1)

    def to_global(local_batch):
        """Assembles each process's rows into global arrays (a dict batch leaf by leaf)."""
        return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(in_sharding, x), local_batch)

    def evaluate(params) -> dict:
        with use_rules(mesh):
            sums = [eval_fn(params, to_global(_local_rows(b))) for b in val_batches]
        nll, count = (float(sum(float(s[i]) for s in sums)) for i in (0, 1))
        loss = nll / count
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
                "val_bpb": loss / math.log(2) * val_tokens_per_byte}

    n_params = count_params(state.params)
    tokens_per_step = t.batch_size * cfg.model.block_size
    flops_per_step = flops_per_token(cfg.model, cfg.model.block_size) * tokens_per_step
    peak = peak_flops_per_device(t.peak_flops) * jax.device_count()
    writer = MetricWriter(workdir, t.tensorboard)
    stop = StopSignals()
    if jax.process_index() == 0:
        where = f"resuming from step {start_step}" if start_step else "starting at step 0"
        tqdm.write(f"gptjax: {n_params / 1e6:.2f}M params, mesh {dict(mesh.shape)}, {jax.device_count()} "
                   f"{jax.devices()[0].platform} devices, {tokens_per_step} tokens/step, {where} of {t.steps}")
    bar = tqdm(total=t.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
               disable=not show_progress or jax.process_index() != 0)
    last = {"time": None, "step_seconds": None}
    summary: dict = {}

    def process(step: int, metrics: dict) -> None:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
            raise GptjaxError(f"loss is {values['loss']} (grad norm {values['grad_norm']}) at step {step}; stopped. "
                              f"The last good checkpoint (step {checkpoints.latest_step()}) is intact in {workdir}; "
                              f"lower train.lr or raise train.warmup_steps")
        now = time.perf_counter()
        if last["time"] is not None:
            dt = now - last["time"]
            last["step_seconds"] = dt if last["step_seconds"] is None else 0.9 * last["step_seconds"] + 0.1 * dt
        last["time"] = now
        postfix = {"loss": f"{values['loss']:.4f}"}
        if last["step_seconds"]:
            values["tokens_per_s"] = tokens_per_step / last["step_seconds"]
            postfix["tok/s"] = f"{values['tokens_per_s']:.0f}"
            if peak:
                values["mfu"] = flops_per_step / last["step_seconds"] / peak
                postfix["mfu"] = f"{100 * values['mfu']:.1f}%"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
        summary.update(values)
        if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
            writer.write(step + 1, values)

    def save(state) -> None:
        checkpoints.save(state, {"grain": iterator.get_state(), "step": int(state.step)}, meta, force=True)

    def _local_rows(global_batch):
        """This process's rows of a global batch (an array or a dict of arrays)."""
        def rows(x):
            per = x.shape[0] // jax.process_count()
            return x[jax.process_index() * per:(jax.process_index() + 1) * per]

        return jax.tree_util.tree_map(rows, global_batch)

    # Fault injection for the resume tests: the process kills itself (SIGKILL, no cleanup) after this step.
    fault_kill_step = int(os.environ.get("GPTJAX_FAULT_KILL_AFTER_STEP", "-1"))
    pending = None
    try:
        for step in range(start_step, t.steps):
            batch = to_global(next(iterator))
            with use_rules(mesh):
                state, metrics = train_fn(state, batch)
            if pending is not None:
                process(*pending)
            pending = (step, metrics)
            done = step + 1
            at_eval = done % t.eval_every == 0 or done == t.steps
            at_save = done % t.checkpoint_every == 0 or done == t.steps
            if at_eval or at_save or stop.received:
                process(*pending)
                pending = None
            if at_eval:
                result = evaluate(state.params)
                summary.update(result)
                writer.write(done, result)
                if jax.process_index() == 0:
                    bar.write(f"step {done}: val loss {result['val_loss']:.4f}, ppl {result['val_ppl']:.2f}, "
                              f"bpb {result['val_bpb']:.4f}")
            if at_save or stop.received:  # a signal may have arrived during the eval above
                save(state)
            if done == fault_kill_step:
                checkpoints.wait()
                os.kill(os.getpid(), signal.SIGKILL)
            if stop.received:
                checkpoints.wait()
                if checkpoints.latest_step() != done:
                    raise GptjaxError(f"stopped by {stop.received} at step {done} but its checkpoint did not complete; "
                                      f"the latest checkpoint is step {checkpoints.latest_step()}")
                raise RunInterrupted(f"stopped by {stop.received} at step {done}; checkpoint saved in {workdir}; "
                                     f"run the same command to resume")
        if pending is not None:
            process(*pending)
        if start_step >= t.steps and latest is not None:
            summary.update(evaluate(state.params))
    finally:
        bar.close()
        stop.restore()
        writer.close()
        checkpoints.close()
    summary["step"] = int(state.step)
    summary["params"] = n_params
    return summary
