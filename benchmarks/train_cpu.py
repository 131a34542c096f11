"""Training speed on CPU: median ms/step and tokens/s of gptjax variants beside a PyTorch nanoGPT reference.

    python benchmarks/train_cpu.py [--steps 40] [--configs small,medium] [--repeats 3]

Each variant runs in its own process (XLA's device count is fixed at start-up), interleaved over `--repeats`
rounds so machine noise hits all variants alike; the table reports the median over rounds of each round's
median step time. `small` is experiments/shakespeare_char_cpu.py (4x128, block 64, batch 12); `medium` is
nanoGPT's 6x384 Shakespeare model (block 256, batch 64, dropout 0.2; 3 timed steps after 1 warm-up, as one
step takes seconds here).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "small": dict(n_layer=4, n_head=4, d_model=128, block_size=64, batch_size=12, dropout=0.0),
    "medium": dict(n_layer=6, n_head=6, d_model=384, block_size=256, batch_size=64, dropout=0.2),
}
VARIANTS = {
    "gptjax fp32, 1 device (multi-threaded XLA)": dict(devices=1, dtype="float32", flags=""),
    "gptjax fp32, 1 device per core (the CPU default)": dict(devices=0, dtype="float32", flags=""),
    "gptjax bf16 compute, 1 device per core": dict(devices=0, dtype="bfloat16", flags=""),
}

WORKER = r'''
import functools, json, sys, time
import jax, jax.numpy as jnp, numpy as np
spec = json.loads(sys.argv[1])
from gptjax.parallel.mesh import configure_cpu_devices
configure_cpu_devices(spec["devices"], spec["config"]["batch_size"])
from gptjax.config import Config, ModelConfig, TrainConfig, MeshConfig
from gptjax.parallel.mesh import make_mesh
from gptjax.train.step import build_step
c = spec["config"]
cfg = Config(model=ModelConfig(vocab_size=66, n_layer=c["n_layer"], n_head=c["n_head"], d_model=c["d_model"],
                               block_size=c["block_size"], dropout=c["dropout"], use_bias=False, gelu_approximate=False,
                               dtype=spec["dtype"]),
             train=TrainConfig(batch_size=c["batch_size"]), mesh=MeshConfig())
step = build_step(cfg, make_mesh(cfg.mesh))
state = step.init_state()
rng = np.random.default_rng(0)
batches = [step.to_global(step.format_batch(rng.integers(0, 65, (c["batch_size"], c["block_size"] + 1), dtype=np.int32)))
           for _ in range(8)]
times, metrics = [], None
for i in range(spec["warmup"] + spec["steps"]):
    start = time.perf_counter()
    state, metrics = step.train(state, batches[i % 8])
    float(metrics["loss"])
    if i >= spec["warmup"]:
        times.append(time.perf_counter() - start)
print(json.dumps({"median_ms": 1000 * float(np.median(times))}))
'''


def run_gptjax(config: dict, variant: dict, steps: int, warmup: int) -> float:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": variant["flags"]}
    spec = {"config": config, "dtype": variant["dtype"], "steps": steps, "warmup": warmup, "devices": variant["devices"]}
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]


def run_torch(config: dict, steps: int, warmup: int) -> float | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    args = ["--layers", config["n_layer"], "--heads", config["n_head"], "--width", config["d_model"], "--block",
            config["block_size"], "--batch", config["batch_size"], "--steps", steps, "--warmup", warmup,
            "--dropout", config["dropout"]]
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "nanogpt_torch.py"), *map(str, args)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--medium-repeats", type=int, default=1)
    p.add_argument("--configs", default="small,medium")
    args = p.parse_args()
    rows = []
    for name in args.configs.split(","):
        config = CONFIGS[name]
        steps, warmup = (args.steps, 5) if name == "small" else (3, 1)
        samples: dict[str, list[float]] = {"PyTorch nanoGPT (eager fp32)": []}
        samples.update({v: [] for v in VARIANTS})
        for _ in range(args.repeats if name == "small" else args.medium_repeats):
            torch_ms = run_torch(config, steps, warmup)
            if torch_ms is not None:
                samples["PyTorch nanoGPT (eager fp32)"].append(torch_ms)
            for variant, spec in VARIANTS.items():
                samples[variant].append(run_gptjax(config, spec, steps, warmup))
        tokens = config["batch_size"] * config["block_size"]
        reference = np.median(samples["PyTorch nanoGPT (eager fp32)"]) if samples["PyTorch nanoGPT (eager fp32)"] else None
        for variant, values in samples.items():
            if not values:
                continue
            ms = float(np.median(values))
            speedup = f"{reference / ms:.2f}x" if reference else "n/a"
            rows.append((name, variant, ms, tokens / ms * 1000, speedup))
            print(f"{name:7s} {variant:42s} {ms:9.1f} ms/step {tokens / ms * 1000:9.0f} tok/s  vs PyTorch {speedup}",
                  flush=True)
    header = ("| config | implementation | median ms/step | tokens/s | speed vs PyTorch |\n"
              "|---|---|---:|---:|---:|\n")
    table = header + "".join(f"| {n} | {v} | {ms:.1f} | {tps:,.0f} | {s} |\n" for n, v, ms, tps, s in rows)
    out = REPO / "benchmarks" / "results" / "train_cpu.md"
    out.write_text(f"`python benchmarks/train_cpu.py --steps {args.steps} --repeats {args.repeats}` "
                   f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
