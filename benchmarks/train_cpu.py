"""Training speed on CPU: whole `gptjax train` runs against nanoGPT's own train.py, and step-level variants.

    python benchmarks/train_cpu.py --nanogpt DIR [--rounds 3] [--configs small,medium] [--medium-steps 40]
    python benchmarks/train_cpu.py [--steps 40] [--configs small,medium] [--repeats 3]

With `--nanogpt DIR` (a writable copy of ../shared/anchors/nanoGPT, unmodified) each config runs as whole
programs, alternating nanoGPT, gptjax and gptjax with bf16 matmuls (A B C A B C, after one warm-up run of each, reported
apart; gptjax's persistent compilation cache is left as a user's second run finds it), and reports per round the
whole-run wall time (process start to exit), the median step time (steps with an evaluation left out) and the
final val loss, then the median ratios and an equal-loss check. `small` is nanoGPT's README CPU line (4x128,
block 64, batch 12, 2000 iters, no dropout) against experiments/shakespeare_char_cpu.py; `medium` is nanoGPT's
6x384 Shakespeare model (block 256, dropout 0.2, batch 16 on these cores, 10 eval batches) for `--medium-steps` steps
against experiments/shakespeare_char.py with the same overrides. Results go to benchmarks/results/train_vs_nanogpt.md.

Without it, the step-level mode:

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
import re
import shutil
import subprocess
import sys
import tempfile
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
batches = [step.to_global(step.format_batch(rng.integers(0, 65, (c["batch_size"], c["block_size"] + 1),
                                                         dtype=np.int32)))
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
    spec = {"config": config, "dtype": variant["dtype"], "steps": steps, "warmup": warmup,
            "devices": variant["devices"]}
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


# nanoGPT's README CPU line, and its 6x384 Shakespeare model at batch 16 (a 64-row step takes ~8 s here).
NANOGPT_ARGS = {
    "small": ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
              "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
              "--lr_decay_iters=2000", "--dropout=0.0"],
    "medium": ["--device=cpu", "--compile=False", "--eval_iters=10", "--log_interval=1", "--batch_size=16"],
}
GPTJAX_EXPERIMENT = {"small": "experiments/shakespeare_char_cpu.py", "medium": "experiments/shakespeare_char.py"}
EVAL_EVERY = {"small": 250}  # nanoGPT's eval_interval on its CPU line (left out of its step times); medium: last step
# Seed spread of nanoGPT's recipe, val loss over the whole split, 4 seeds (benchmarks/quality_cpu.py): nanoGPT's
# train.py fixes its seed, so its spread cannot be measured by running it unmodified.
NANOGPT_SEED_STD = 0.0142


def nanogpt_command(config: str, out_dir: Path, medium_steps: int) -> list[str]:
    args = list(NANOGPT_ARGS[config])
    if config == "medium":
        args += [f"--max_iters={medium_steps}", f"--eval_interval={medium_steps}"]
    return [sys.executable, "train.py", "config/train_shakespeare_char.py", *args, f"--out_dir={out_dir}"]


def gptjax_command(config: str, workdir: Path, seed: int, medium_steps: int) -> list[str]:
    args = ["--config", GPTJAX_EXPERIMENT[config], "--workdir", str(workdir), "--config.train.log_every=1",
            f"--config.train.seed={seed}"]
    if config == "medium":
        args += ["--config.train.batch_size=16", f"--config.train.steps={medium_steps}",
                 f"--config.train.eval_every={medium_steps}", "--config.train.eval_batches=10"]
    return [sys.executable, "-m", "gptjax", "train", *args]


def timed_run(command: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"train_cpu: {' '.join(command[:4])} ... failed (exit {out.returncode}) in {cwd}:\n"
                 f"{out.stderr[-2000:]}")
    return wall, out.stdout


def nanogpt_result(stdout: str, eval_every: int) -> tuple[float, float]:
    """(median step seconds, last val loss) from train.py's log; steps that ran an evaluation are left out."""
    steps = [(int(m[0]), float(m[1]) / 1000)
             for m in re.findall(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", stdout, re.M)]
    times = [dt for it, dt in steps if it > 0 and it % eval_every]
    val = re.findall(r"^step \d+: train loss [\d.]+, val loss ([\d.]+)", stdout, re.M)
    return float(np.median(times)), float(val[-1])


def gptjax_result(workdir: Path, stdout: str) -> tuple[float, float]:
    """(median step seconds, final val loss) from metrics.jsonl; a step read after an eval or a save (the run's own
    train.eval_every / checkpoint_every) is left out."""
    train = json.loads((workdir / "config.json").read_text())["train"]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_s"] for r in records if "step_s" in r and r["step"] > 2
             and (r["step"] - 1) % train["eval_every"] and (r["step"] - 1) % train["checkpoint_every"]]
    return float(np.median(times)), float(json.loads(stdout.strip().splitlines()[-1])["val_loss"])


def prepared_nanogpt(directory: Path) -> Path:
    """DIR with nanoGPT's shakespeare_char data prepared from gptjax's bundled copy (prepare.py downloads otherwise)."""
    data = directory / "data" / "shakespeare_char"
    if not (directory / "train.py").is_file():
        sys.exit(f"train_cpu: {directory} has no train.py; pass a copy of ../shared/anchors/nanoGPT "
                 f"(cp -r ../shared/anchors/nanoGPT /tmp/nanoGPT)")
    if not (data / "train.bin").is_file():
        if not (data / "input.txt").is_file():
            shutil.copy(REPO / "gptjax" / "data" / "bundled" / "tinyshakespeare.txt", data / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    return directory


# gptjax's programs in the rotation: its default (float32) and bfloat16 matmuls (float32 accumulation and master
# weights: gptjax.model.layers.einsum_f32)
GPTJAX_VARIANTS = {"gptjax": [], "gptjax bf16": ["--config.model.dtype=bfloat16"]}


def versus_nanogpt(args: argparse.Namespace) -> None:
    nanogpt = prepared_nanogpt(Path(args.nanogpt).resolve())
    scratch = Path(tempfile.mkdtemp(prefix="train_vs_nanogpt_"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # a CPU install has no libtpu to probe (the test extra does)
    sections = []
    for config in args.configs.split(","):
        eval_every = EVAL_EVERY.get(config, args.medium_steps)
        runs: dict[str, list] = {"nanoGPT": [], **{name: [] for name in GPTJAX_VARIANTS}}

        def run(name: str, index: int) -> tuple[float, float, float]:
            where = scratch / f"{config}_{name.replace(' ', '_')}_{index}"
            if name == "nanoGPT":
                wall, stdout = timed_run(nanogpt_command(config, where, args.medium_steps), nanogpt, env)
                return (wall, *nanogpt_result(stdout, eval_every))
            command = gptjax_command(config, where, index, args.medium_steps) + GPTJAX_VARIANTS[name]
            wall, stdout = timed_run(command, REPO, env)
            return (wall, *gptjax_result(where, stdout))

        warmup = {name: run(name, 99) for name in runs}
        print(f"{config} warm-up runs (not in the medians): " +
              ", ".join(f"{n} {w[0]:.1f} s" for n, w in warmup.items()), flush=True)
        for round_ in range(args.rounds):
            for name in runs:
                runs[name].append(run(name, round_))
            print(f"{config} round {round_}: " + ", ".join(
                f"{n} {r[-1][0]:.1f} s, {1000 * r[-1][1]:.1f} ms/step, val {r[-1][2]:.4f}" for n, r in runs.items()),
                flush=True)
        sections.append(rounds_table(config, runs, warmup))
        print(sections[-1], flush=True)
    out = REPO / "benchmarks" / "results" / "train_vs_nanogpt.md"
    command = f"python benchmarks/train_cpu.py --nanogpt DIR --rounds {args.rounds} --configs {args.configs}" + (
        f" --medium-steps {args.medium_steps}" if "medium" in args.configs else "")
    out.write_text(f"`{command}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load "
                   f"{os.getloadavg()[0]:.1f} at the end)\n\n" + "\n".join(sections))
    shutil.rmtree(scratch, ignore_errors=True)


def rounds_table(config: str, runs: dict, warmup: dict) -> str:
    """Per round: each program's wall time, median step and val loss; then median ratios against nanoGPT (>1: faster
    than nanoGPT) and the equal-loss check."""
    tokens = {"small": 12 * 64, "medium": 16 * 256}[config]
    names = list(runs)
    header = "| round | " + " | ".join(f"{n} wall s | {n} ms/step | {n} val" for n in names) + " |"
    lines = [f"**{config}**\n", header, "|---|" + "---:|" * (3 * len(names))]
    for i in range(len(runs["nanoGPT"])):
        lines.append(f"| {i} | " + " | ".join(f"{runs[n][i][0]:.1f} | {1000 * runs[n][i][1]:.1f} | {runs[n][i][2]:.4f}"
                                             for n in names) + " |")
    base = runs["nanoGPT"]
    val_base = float(np.median([r[2] for r in base]))
    lines.append("")
    lines.append(f"nanoGPT: {tokens / float(np.median([r[1] for r in base])):,.0f} tokens/s, val {val_base:.4f}; "
                 f"warm-up run {warmup['nanoGPT'][0]:.1f} s")
    for name in names[1:]:
        wall = float(np.median([a[0] / b[0] for a, b in zip(base, runs[name])]))
        step = float(np.median([a[1] / b[1] for a, b in zip(base, runs[name])]))
        vals = [r[2] for r in runs[name]]
        spread = max(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, NANOGPT_SEED_STD)
        gap = float(np.median(vals)) - val_base
        lines.append(f"{name}: whole run **{wall:.2f}x** nanoGPT's speed, step **{step:.2f}x** "
                     f"({tokens / float(np.median([r[1] for r in runs[name]])):,.0f} tokens/s); val "
                     f"{float(np.median(vals)):.4f}, {gap:+.4f} vs nanoGPT with seed spread {spread:.4f}: "
                     f"{'equal loss' if abs(gap) <= 2 * spread else 'NOT equal loss'} (|gap| <= 2 x spread); "
                     f"warm-up run {warmup[name][0]:.1f} s")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--medium-repeats", type=int, default=1)
    p.add_argument("--configs", default="small,medium")
    p.add_argument("--nanogpt", help="a copy of ../shared/anchors/nanoGPT: time whole runs against its train.py")
    p.add_argument("--rounds", type=int, default=3,
                   help="--nanogpt: alternating rounds (one run of each program) per config")
    p.add_argument("--medium-steps", type=int, default=40, help="--nanogpt: steps of the 6x384 runs")
    args = p.parse_args()
    if args.nanogpt:
        versus_nanogpt(args)
        return
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
        reference = (np.median(samples["PyTorch nanoGPT (eager fp32)"]) if samples["PyTorch nanoGPT (eager fp32)"]
                     else None)
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
