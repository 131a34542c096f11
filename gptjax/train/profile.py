"""Profiler traces of chosen steps (train.profile_steps = "START:N"): a jax.profiler trace of steps START to
START+N-1 (counted from 1, as metrics.jsonl counts them) in <workdir>/profile/, for TensorBoard's profile plugin or
Perfetto (`plugins/profile/<time>/<host>.xplane.pb`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from gptjax.errors import GptjaxError

PROFILE_DIR = "profile"


@dataclasses.dataclass(frozen=True)
class ProfileWindow:
    first: int  # the first traced step (1-based)
    last: int  # the last traced step, included

    def holds(self, step: int) -> bool:
        return self.first <= step <= self.last


def profile_window(spec: str, steps: int) -> ProfileWindow | None:
    """The window "START:N" names (None for ""), checked against a run of `steps` steps; anything else is one
    GptjaxError, raised before the run opens."""
    if not spec:
        return None
    start, sep, count = spec.partition(":")
    if not (sep and start.strip().isdigit() and count.strip().isdigit()):
        raise GptjaxError(f"train.profile_steps='{spec}' is not START:N (e.g. 10:5 traces steps 10 to 14)")
    first, n = int(start), int(count)
    if first < 1 or n < 1:
        raise GptjaxError(f"train.profile_steps='{spec}' needs START >= 1 and N >= 1 (steps count from 1)")
    if first + n - 1 > steps:
        raise GptjaxError(f"train.profile_steps='{spec}' traces steps {first} to {first + n - 1}, past the end of the "
                          f"run (train.steps={steps}); choose a window inside it")
    return ProfileWindow(first, first + n - 1)


class StepProfiler:
    """Starts a jax.profiler trace before the first step of the window this process runs (a run resumed inside the
    window traces the rest of it) and stops it once the window's last step has finished on the device."""

    def __init__(self, window: ProfileWindow | None, workdir: Path):
        self.window = window
        self.log_dir = str(workdir / PROFILE_DIR)
        self.tracing = False

    def before_step(self, step: int) -> None:
        if self.window is not None and not self.tracing and self.window.holds(step):
            jax.profiler.start_trace(self.log_dir)
            self.tracing = True

    def after_step(self, step: int, state) -> None:
        if self.tracing and step == self.window.last:
            jax.block_until_ready(state)
            self.stop()

    def stop(self) -> None:
        if self.tracing:
            self.tracing = False
            jax.profiler.stop_trace()
