"""Timing train steps for the benchmarks that alternate several built models (noise hits all alike)."""
from __future__ import annotations

import time

import numpy as np


def compiled_step(cfg, seed: int = 0):
    """(step, state, batch): cfg's train step built on its mesh and run once (compiled), on a random token batch."""
    from gptjax.parallel.mesh import make_mesh
    from gptjax.train.step import build_step

    step = build_step(cfg, make_mesh(cfg.mesh))
    tokens = np.random.default_rng(seed).integers(0, cfg.model.vocab_size,
                                                  (cfg.train.batch_size, cfg.model.block_size + 1), dtype=np.int32)
    batch = step.to_global(step.format_batch(tokens))
    state, metrics = step.train(step.init_state(), batch)
    float(metrics["loss"])
    return step, state, batch


def timed_steps(step, state, batch, steps: int):
    """(state after `steps` train steps, each step's milliseconds, the loss read back every step)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step.train(state, batch)
        float(metrics["loss"])
        times.append(1000 * (time.perf_counter() - start))
    return state, times
