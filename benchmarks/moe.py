"""What a mixture of experts costs on CPU: train-step time of a MoE model against the dense model with the same
active parameters per token, and dropless (sorted tokens, grouped matmul) against capacity dispatch.

    python benchmarks/moe.py [--rounds 3] [--steps 3] [--batch 8] [--out benchmarks/results/moe.md]

Models: experiments/shakespeare_char.py's 6x384 (block 256, no dropout) with a GELU MLP. Dense: d_ff 1536.
MoE: 8 experts of width 768, top-2, so a token goes through 2 x 768 = 1536 hidden units, as in the dense model
(plus a 384 x 8 router): equal active parameters and equal matmul FLOPs per token. Each model's train step is
built and compiled once; rounds then alternate the models (A B C, A B C, ...) so machine noise hits all alike, each
round timing `--steps` steps after one warm-up; the table gives the median over all timed steps. The routing
overhead is the MoE step time over the dense one.
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
DENSE_FF = 1536
EXPERTS, TOP_K = 8, 2
VARIANTS = {
    "dense (d_ff 1536)": {"d_ff": DENSE_FF},
    "moe dropless (8 x 768, top-2)": {"moe_experts": EXPERTS, "moe_top_k": TOP_K, "moe_d_ff": DENSE_FF // TOP_K,
                                      "moe_dispatch": "dropless"},
    "moe capacity 1.25 (8 x 768, top-2)": {"moe_experts": EXPERTS, "moe_top_k": TOP_K,
                                           "moe_d_ff": DENSE_FF // TOP_K, "moe_dispatch": "capacity",
                                           "moe_capacity_factor": 1.25},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and round")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/moe.md"))
    return parser.parse_args(argv)


def variant_config(base, fields: dict):
    return dataclasses.replace(base, model=dataclasses.replace(base.model, **fields))


def base_config(batch: int):
    from gptjax.config import load_experiment, to_config

    cfg = to_config(load_experiment(REPO / "experiments" / "shakespeare_char.py"))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=65, dropout=0.0, mlp="gelu"),
                               train=dataclasses.replace(cfg.train, batch_size=batch))


def time_steps(configs: dict, rounds: int, steps: int) -> dict[str, float]:
    """Median ms of a whole train step per model, alternating the models."""
    from step_timing import compiled_step, timed_steps

    built = {name: list(compiled_step(cfg)) for name, cfg in configs.items()}
    step_ms = {name: [] for name in configs}
    for _ in range(rounds):
        for name in configs:
            step, state, batch = built[name]
            built[name][1], times = timed_steps(step, state, batch, steps)
            step_ms[name] += times
    return {name: float(np.median(times)) for name, times in step_ms.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from gptjax.parallel.mesh import configure_cpu_devices

    base = base_config(args.batch)
    devices = configure_cpu_devices(0, args.batch)
    import jax

    from gptjax.model.transformer import flops_per_token

    configs = {name: variant_config(base, fields) for name, fields in VARIANTS.items()}
    started = time.perf_counter()
    step_ms = time_steps(configs, args.rounds, args.steps)
    dense_ms = step_ms[next(iter(VARIANTS))]
    command = "python benchmarks/moe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Mixture of experts: step time against the dense model of equal active parameters", "",
        f"`{command.strip()}` — {date.today().isoformat()}, jax {jax.__version__}, {platform.machine()}, "
        f"{len(jax.devices())} CPU device(s) ({devices or 'XLA_FLAGS'} requested), "
        f"{time.perf_counter() - started:.0f} s.", "",
        f"6x384 GELU model, block 256, batch {args.batch}; medians of {args.rounds} alternating rounds x "
        f"{args.steps} steps.", "",
        "| model | FLOPs/token | step ms | vs dense |", "|---|---:|---:|---:|",
        *(f"| {name} | {flops_per_token(cfg.model, cfg.model.block_size) / 1e6:.1f}M | {step_ms[name]:.0f} | "
          f"{step_ms[name] / dense_ms:.2f}x |" for name, cfg in configs.items()),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
