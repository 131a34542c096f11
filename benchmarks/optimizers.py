"""What each `train.optimizer` costs: step time on CPU and optimizer-state memory on the GPT-2 124M shape.

    python benchmarks/optimizers.py [--rounds 3] [--steps 3] [--batch 8] [--out benchmarks/results/optimizers.md]

Step time: experiments/shakespeare_char.py (6x384, 6 heads, block 256, dropout 0.2) at `--batch` sequences, one
device per core as `gptjax train` runs on CPU. Each optimizer's train step is built and compiled once; then rounds
alternate the optimizers (A B C D E, A B C D E, ...) so machine noise hits all alike, each round timing `--steps`
steps after one warm-up; the table gives the median over all timed steps. The optimizer's share is timed apart: its
jitted `update` alone on the model's params and random gradients, alternated the same way.

State memory: the bytes of `optimizer.init(params)` for experiments/gpt2_124m.py's params, from `jax.eval_shape`
(nothing is allocated), per optimizer at its defaults (Adafactor factors dims >= 128).
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
OPTIMIZERS = ("adamw", "muon", "lion", "adafactor", "sgd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per optimizer and round")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step of the 6x384 model")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/optimizers.md"))
    return parser.parse_args(argv)


def experiment(name: str, vocab_size: int, **train):
    """experiments/NAME.py with `train` fields set and the vocabulary its data would give."""
    from gptjax.config import load_experiment, to_config

    cfg = to_config(load_experiment(REPO / "experiments" / f"{name}.py"))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size),
                               train=dataclasses.replace(cfg.train, **train))


def state_bytes(cfg) -> int:
    """Bytes of the optimizer state for cfg's params, from shapes only."""
    import flax.linen as nn
    import jax

    from gptjax.model.transformer import abstract_params
    from gptjax.train.optim import run_optimizer

    params = nn.unbox(abstract_params(cfg.model, 0))
    state = jax.eval_shape(run_optimizer(cfg).init, params)
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))


def with_optimizer(cfg, name: str):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, optimizer=name))


def time_steps(base, rounds: int, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms of a whole train step and of the optimizer update alone, per optimizer, alternating them."""
    import jax
    from step_timing import compiled_step, timed_steps

    built, updates = {}, {}
    for name in OPTIMIZERS:
        step, state, batch = compiled_step(with_optimizer(base, name))
        grads = jax.tree_util.tree_map(lambda p: jax.random.normal(jax.random.PRNGKey(1), p.shape, p.dtype) * 1e-3,
                                       state.params)
        update = jax.jit(step.optimizer.update)
        jax.block_until_ready(update(grads, state.opt_state, state.params))
        built[name] = [step, state, batch]
        updates[name] = (update, grads)
    step_ms = {name: [] for name in OPTIMIZERS}
    update_ms = {name: [] for name in OPTIMIZERS}
    for _ in range(rounds):
        for name in OPTIMIZERS:
            step, state, batch = built[name]
            state, times = timed_steps(step, state, batch, steps)
            step_ms[name] += times
            built[name][1] = state
            update, grads = updates[name]
            for _ in range(steps):
                start = time.perf_counter()
                jax.block_until_ready(update(grads, state.opt_state, state.params))
                update_ms[name].append(1000 * (time.perf_counter() - start))
    return ({n: float(np.median(v)) for n, v in step_ms.items()},
            {n: float(np.median(v)) for n, v in update_ms.items()})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from gptjax.parallel.mesh import configure_cpu_devices

    base = experiment("shakespeare_char", 65, batch_size=args.batch)
    devices = configure_cpu_devices(0, args.batch)
    import jax

    started = time.perf_counter()
    step_ms, update_ms = time_steps(base, args.rounds, args.steps)
    gpt2 = experiment("gpt2_124m", 50257)
    memory = {name: state_bytes(with_optimizer(gpt2, name)) for name in OPTIMIZERS}
    import flax.linen as nn

    from gptjax.model.transformer import abstract_params

    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nn.unbox(abstract_params(gpt2.model, 0))))
    command = "python benchmarks/optimizers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Optimizers: step time and state memory", "",
        f"`{command.strip()}` — {date.today().isoformat()}, jax {jax.__version__}, {platform.machine()}, "
        f"{len(jax.devices())} CPU device(s) ({devices or 'XLA_FLAGS'} requested), "
        f"{time.perf_counter() - started:.0f} s.", "",
        f"Step: experiments/shakespeare_char.py (6x384, block 256, dropout 0.2), batch {args.batch}; medians of "
        f"{args.rounds} alternating rounds x {args.steps} steps. Update: the optimizer's jitted `update` alone on "
        "the same params.", "",
        "| optimizer | step ms | update ms | update share |", "|---|---:|---:|---:|",
        *(f"| {n} | {step_ms[n]:.0f} | {update_ms[n]:.1f} | {update_ms[n] / step_ms[n]:.1%} |" for n in OPTIMIZERS),
        "",
        f"State: `optimizer.init` of experiments/gpt2_124m.py's params (vocab 50257, {n_params / 1e6:.1f}M, "
        "float32), by `jax.eval_shape`.", "",
        "| optimizer | state MiB | bytes / param | vs adamw |", "|---|---:|---:|---:|",
        *(f"| {n} | {memory[n] / 2**20:.1f} | {memory[n] / n_params:.2f} | {memory[n] / memory['adamw']:.2f} |"
          for n in OPTIMIZERS),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
