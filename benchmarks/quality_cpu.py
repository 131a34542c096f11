"""Final val loss of the 2000-step shakespeare_char_cpu run, gptjax beside a PyTorch nanoGPT reference, over seeds.

    python benchmarks/quality_cpu.py [--seeds 0 1 2 3] [--work /tmp/gptjax_quality]

Both train nanoGPT's CPU recipe (4x128, block 64, batch 12, 2000 steps, lr 1e-3 -> 1e-4 cosine, warmup 100,
beta2 0.99, wd 0.1, clip 1.0) on the bundled Shakespeare and are scored the same way: the mean loss over the whole
val split in consecutive block_size windows (`gptjax eval`). One seed of either is a noisy sample (their spread
over seeds is ~0.01), so the table gives every seed, the mean and the standard deviation. Runs are interleaved,
one at a time, and the machine's other load should be nil.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "experiments" / "shakespeare_char_cpu.py"


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def gptjax_val_loss(seed: int, work: Path) -> float:
    workdir = work / f"gptjax_seed{seed}"
    if workdir.exists():
        shutil.rmtree(workdir)
    gptjax = [sys.executable, "-m", "gptjax.cli"]
    subprocess.run([*gptjax, "train", "--config", str(CONFIG), "--workdir", str(workdir),
                    f"--config.train.seed={seed}"], cwd=REPO, check=True, capture_output=True, text=True)
    out = subprocess.run([*gptjax, "eval", "--workdir", str(workdir), "--batch-size", "64"], cwd=REPO, check=True,
                         capture_output=True, text=True)
    return last_json(out.stdout)["loss"]


def torch_val_loss(seed: int, data_dir: Path) -> float:
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "nanogpt_torch.py"), "--data", str(data_dir),
                          "--steps", "2000", "--seed", str(seed)], cwd=REPO, check=True, capture_output=True, text=True)
    return last_json(out.stdout)["val_loss"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--work", type=Path, default=Path("/tmp/gptjax_quality"))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from gptjax.config import load_experiment, to_config
    from gptjax.prepare.resolve import resolve_data

    data_dir = resolve_data(to_config(load_experiment(str(CONFIG))).data)
    losses: dict[str, list[float]] = {"gptjax": [], "PyTorch nanoGPT": []}
    for seed in args.seeds:
        losses["gptjax"].append(gptjax_val_loss(seed, args.work))
        losses["PyTorch nanoGPT"].append(torch_val_loss(seed, data_dir))
        print(f"seed {seed}: gptjax {losses['gptjax'][-1]:.4f}  PyTorch {losses['PyTorch nanoGPT'][-1]:.4f}",
              flush=True)
    header = ("| implementation | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | std |\n"
              "|---|" + "---:|" * (len(args.seeds) + 2) + "\n")
    table = header + "".join(
        f"| {name} | " + " | ".join(f"{v:.4f}" for v in values)
        + f" | {np.mean(values):.4f} | {np.std(values, ddof=1):.4f} |\n"
        for name, values in losses.items())
    out = REPO / "benchmarks" / "results" / "quality_cpu.md"
    out.write_text(f"`python benchmarks/quality_cpu.py --seeds {' '.join(map(str, args.seeds))}` "
                   f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores): val loss over the whole val split "
                   f"after 2000 steps of experiments/shakespeare_char_cpu.py\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
