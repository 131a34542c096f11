"""The training loop (`fit`, `train`): drives an open `Run` step by step. It resumes exactly from the newest
restorable checkpoint in the workdir.

`train(cfg, workdir, hooks=...)` opens a `Run` (`gptjax.train.run`: data, tokenizer, mesh, the step from
`build_step`, checkpoints, metric sinks, the workdir lock) and drives it step by step (`gptjax.train.hooks`).
Evaluation, checkpointing and logging are hooks; extra
hooks (the fault injection the tests use) are passed in and never live in this file; train.stats_every's steps run
the step's stats twin, and train.profile_steps's steps run inside a profiler trace. Step n+1 is
dispatched before step n's metrics are read, so the host never waits on the device between steps.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from gptjax.config import Config
from gptjax.errors import GptjaxError, RunInterrupted
from gptjax.model.transformer import count_params
from gptjax.train.hooks import Hook, MetricsLog, default_hooks, format_eval
from gptjax.train.profile import StepProfiler, profile_window
from gptjax.train.run import Run, open_run
from gptjax.train.stats import stats_due


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
    profiler = StepProfiler(profile_window(t.profile_steps, t.steps), run.workdir)
    try:
        for step in range(run.start_step, t.steps):
            done = step + 1
            batch = run.step.to_global(run.step.format_batch(next(run.iterator)))
            profiler.before_step(done)
            state, metrics = run.step.train(state, batch, with_stats=stats_due(t.stats_every, done))
            profiler.after_step(done, state)
            run.state, run.last_batch = state, batch
            log.push(step, metrics)
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
        profiler.stop()
        log.close()
    run.summary["step"] = int(state.step)
    run.summary["params"] = count_params(state.params)
    return run.summary


def train(cfg: Config, workdir: str | Path, show_progress: bool = True, hooks: Sequence[Hook] = (),
          allow_data_change: bool = False) -> dict:
    """Trains (or resumes) a run in `workdir`; returns the final metrics. `hooks` run after the default ones;
    `allow_data_change` lets a resumed run continue on data other than its checkpoints were trained on."""
    profile_window(cfg.train.profile_steps, cfg.train.steps)  # a bad window fails before the run opens
    run = open_run(cfg, workdir, allow_data_change)
    failing = True
    try:
        summary = fit(run, (*default_hooks(run.cfg), *hooks), show_progress)
        failing = False
        return summary
    finally:
        run.close(failing)
