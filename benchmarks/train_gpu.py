"""Training throughput and MFU of GPT-2 124M on one accelerator: the real train step (`build_step`, the trainer's
jitted, sharded step with its AdamW, clipping and loss), bf16 compute with float32 master weights, T=1024.

Batches are random token ids (throughput does not depend on the data; no corpus to prepare on the GPU machine).
The first `--warmup` steps (compilation included) are not timed; each timed step ends with `block_until_ready`,
and the report gives the median step. MFU = analytic training FLOPs per token
(`gptjax.model.transformer.flops_per_token`: 6·matmul params + 12·L·d·T, full attention context, nanoGPT's and
PaLM's convention) × tokens/s over the device's dense bf16 peak (`gptjax.train.metrics.PEAK_FLOPS`, or
`--peak-flops`). Anchors: llm.c ~40% on an H100, nanoGPT ~29% on an A100; the goal here is ≥50% on one
H100/H200. Run from the repository root:

    python benchmarks/train_gpu.py [--batch-size 32] [--steps 30] [--remat none] [--attention auto] [--out FILE]
    python benchmarks/train_gpu.py --smoke      # a tiny model for a few steps on any device (CPU included)
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
SMOKE = ["model.n_layer=2", "model.n_head=2", "model.d_model=64", "model.block_size=64", "model.scan_layers=False"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/gpt2_124m.py")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step (per device with one)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one compiles)")
    parser.add_argument("--remat", default="none", help="model.remat (none, full, save_dots, save_attn_out)")
    parser.add_argument("--attention", default="auto", help="model.attention_impl (auto, xla, cudnn, splash)")
    parser.add_argument("--dtype", default="bfloat16", help="model.dtype (compute; weights stay float32)")
    parser.add_argument("--peak-flops", type=float, default=0.0, help="per device; 0 = from the known-device table")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="any further config override, e.g. model.scan_layers=False")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer 64-wide model, block 64, 2 timed steps")
    parser.add_argument("--out", default="", help="also write the report (markdown) here")
    return parser.parse_args(argv)


def benchmark_config(args: argparse.Namespace):
    from gptjax import config as config_lib

    cd = config_lib.load_experiment(REPO_ROOT / args.config)
    overrides = [f"model.dtype={args.dtype}", f"model.remat={args.remat}", f"model.attention_impl={args.attention}",
                 f"train.batch_size={args.batch_size}", "train.grad_accum=1", f"train.peak_flops={args.peak_flops}",
                 "mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=1", *(SMOKE if args.smoke else []), *args.override]
    cd = config_lib.apply_overrides(cd, overrides)
    if not cd.model.vocab_size:
        with cd.model.unlocked():
            cd.model.vocab_size = 50257  # the GPT-2 BPE vocabulary (padded to 50304 by model.vocab_multiple)
    cfg = config_lib.to_config(cd)
    config_lib.validate(cfg)
    return cfg


def measure(cfg, steps: int, warmup: int) -> dict:
    """Median step time, tokens/s and MFU of `steps` timed train steps after `warmup` untimed ones."""
    import jax
    import numpy as np

    from gptjax.model.transformer import count_params, flops_per_token
    from gptjax.parallel.mesh import make_mesh
    from gptjax.train.metrics import peak_flops_per_device
    from gptjax.train.step import build_step

    mesh = make_mesh(cfg.mesh)
    step = build_step(cfg, mesh)
    state = step.init_state()
    rng = np.random.default_rng(0)
    batch_size, seq_len = cfg.train.batch_size, cfg.model.block_size

    def batch():
        tokens = rng.integers(0, cfg.model.vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
        return step.to_global(step.format_batch(tokens))

    started = time.perf_counter()
    for _ in range(warmup):
        state, metrics = step.train(state, batch())
    jax.block_until_ready(state)
    warmup_s = time.perf_counter() - started
    times = []
    for _ in range(steps):
        host_batch = batch()  # made before the clock starts: the trainer prefetches its batches
        t = time.perf_counter()
        state, metrics = step.train(state, host_batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
    loss = float(np.asarray(metrics["loss"]))
    step_s = statistics.median(times)
    tokens_per_s = batch_size * seq_len / step_s
    flops = flops_per_token(cfg.model, seq_len)
    peak = peak_flops_per_device(cfg.train.peak_flops) * jax.device_count()
    device = jax.devices()[0]
    m = cfg.model
    return {"model": f"{cfg.name}: {m.n_layer} x {m.d_model}, {m.n_head} heads", "warmup_steps": warmup,
            "device": f"{jax.device_count()} x {device.device_kind} ({device.platform})", "params": count_params(
        state.params), "batch_size": batch_size, "seq_len": seq_len, "dtype": cfg.model.dtype, "remat": cfg.model.remat,
        "attention_impl": cfg.model.attention_impl, "warmup_s": warmup_s, "median_step_s": step_s,
        "step_s": times, "tokens_per_s": tokens_per_s, "flops_per_token": flops, "peak_flops": peak,
        "mfu": flops * tokens_per_s / peak if peak else float("nan"), "loss": loss}


def markdown(result: dict, command: str) -> str:
    import jax

    return "\n".join([
        "# Training throughput and MFU on one accelerator", "",
        f"Command (from the repository root): `{command}`", "",
        f"Device: {result['device']}; jax {jax.__version__}; {platform.platform()}.", "",
        "| model | params | batch x T | dtype | remat | attention | median step | tokens/s | MFU |",
        "|---|---:|---|---|---|---|---:|---:|---:|",
        f"| {result['model']} | {result['params'] / 1e6:.1f}M | {result['batch_size']} x {result['seq_len']} | "
        f"{result['dtype']} | {result['remat']} | {result['attention_impl']} | {1e3 * result['median_step_s']:.1f} ms "
        f"| {result['tokens_per_s']:,.0f} | **{100 * result['mfu']:.1f}%** |", "",
        f"FLOPs per token {result['flops_per_token']:.4g} (6·matmul params + 12·L·d·T); peak "
        f"{result['peak_flops']:.4g} FLOP/s; {result['warmup_steps']} untimed warm-up steps (the first compiles) "
        f"{result['warmup_s']:.1f} s, then {len(result['step_s'])} timed; final loss {result['loss']:.3f} on random "
        f"tokens.", ""])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.batch_size = min(args.steps, 2), min(args.warmup, 1), min(args.batch_size, 4)
    cfg = benchmark_config(args)
    result = measure(cfg, args.steps, args.warmup)
    command = shlex.join(["python", "benchmarks/train_gpu.py", *(sys.argv[1:] if argv is None else argv)])
    report = markdown(result, command)
    print(report)
    print(json.dumps({k: v for k, v in result.items() if k != "step_s"}))
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
