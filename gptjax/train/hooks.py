"""Training hooks: what runs after a dispatched step when due — logging, evaluation (val loss, downstream tasks),
checkpoints, finetune samples. A hook reads the state and writes files; it never changes the state."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Protocol

import jax
from tqdm.auto import tqdm

from gptjax import fileio
from gptjax.config import Config, eval_task_specs
from gptjax.errors import GptjaxError
from gptjax.model.transformer import flops_per_token
from gptjax.train.metrics import peak_flops_per_device
from gptjax.train.run import Run
from gptjax.train.state import TrainState
from gptjax.train.stats import is_stats_key


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
        step_stats = {k: values.pop(k) for k in [k for k in values if is_stats_key(k)]}  # logged on their step
        if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
            raise non_finite_error(run,
                                   f"loss is {values['loss']} (grad norm {values['grad_norm']}) at step {step + 1}")
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
        logged = values if (step + 1) % t.log_every == 0 or step + 1 == t.steps else {}
        if logged or step_stats:
            run.writer.write(step + 1, {**logged, **step_stats})

    def close(self) -> None:
        self.bar.close()


def non_finite_error(run: Run, what: str) -> GptjaxError:
    last = run.checkpoints.latest_step()
    intact = (f"the last good checkpoint (step {last}) is intact in {run.workdir}" if last is not None
              else f"no checkpoint was written to {run.workdir}")
    return GptjaxError(f"{what}; stopped, {intact}. Resume it with a lower learning rate, e.g. the same command with "
                       f"--config.train.lr={run.cfg.train.lr / 2:g} "
                       f"(or raise train.warmup_steps / set train.grad_clip); "
                       f"the change is recorded in record.json")


@dataclasses.dataclass
class EvalHook:
    """Validation loss (and that of the weight average, with train.ema_decay) every `train.eval_every` steps and at
    the end."""

    def due(self, run: Run, done: int) -> bool:
        return done % run.cfg.train.eval_every == 0 or done == run.cfg.train.steps

    def __call__(self, run: Run, done: int, state: TrainState) -> None:
        result = run.evaluate_state(state)
        run.summary.update(result)
        run.writer.write(done, result)
        if run.is_main:
            tqdm.write(f"step {done}: {format_eval(result)}")


def format_eval(result: dict) -> str:
    """'val loss 1.2345, ppl 3.44, bpb 0.5000' / 'val loss 0.1234, acc 0.9600, ...' for the terminal."""
    parts = [f"{k.removeprefix('val_').replace('_', ' ')} {v:.{2 if k == 'val_ppl' else 4}f}"
             for k, v in result.items()]
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
        specs = eval_task_specs(cfg.train.eval_tasks)
        self.tasks = [load_task(name, Path(data_dir), 0, limit) for name, limit in specs]

    def __call__(self, run: Run, done: int, state: TrainState) -> None:
        from gptjax.api import LM
        from gptjax.eval.suite import run_task

        lm = LM(run.cfg, state.params, run.tokenizer, step=done)
        values = {}
        for task in self.tasks:
            metrics = run_task(lm, task, batch_size=run.cfg.train.batch_size, bootstrap_iters=1000,
                               progress=False).metrics
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
        from gptjax.finetune.batches import RecordEncoder

        f, block = run.cfg.finetune, run.cfg.model.block_size
        lm = LM(run.cfg, state.params, run.tokenizer, step=done)
        encoder = RecordEncoder(f.template, run.tokenizer)
        prompts = [ids[-max(block - f.max_new_tokens, 1):] for ids in run.finetune.prompts["test"]]
        responses = lm.generate_ids(prompts, max_new_tokens=min(f.max_new_tokens, block - 1), temperature=0.0,
                                    stop_id=encoder.stop_id())
        lines = [json.dumps({"prompt": encoder.shown_prompt(p), "reference": ref,
                             "response": run.tokenizer.decode(r), "step": done})
                 for p, ref, r in zip(run.finetune.prompts["test"], run.finetune.references["test"], responses)]
        if run.is_main:
            fileio.write_text_atomic(run.workdir / "samples.jsonl", "".join(line + "\n" for line in lines))
            tqdm.write(f"step {done}: {len(lines)} held-out responses written to {run.workdir / 'samples.jsonl'}")


DEFAULT_HOOKS: tuple[Hook, ...] = (EvalHook(), CheckpointHook())


def default_hooks(cfg: Config) -> tuple[Hook, ...]:
    hooks = (*DEFAULT_HOOKS, TaskEvalHook(cfg)) if cfg.train.eval_tasks else DEFAULT_HOOKS
    return (*hooks, SamplesHook()) if cfg.train.objective in ("sft", "dpo") else hooks
