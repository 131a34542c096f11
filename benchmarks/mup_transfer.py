"""μP width transfer on Shakespeare char: does the best Adam lr at the narrow width stay best at the wide one?

    python benchmarks/mup_transfer.py [--quick] [--widths 64,256] [--lrs 3e-3,1e-2,3e-2] [--steps 1000]
                                      [--out benchmarks/results/mup_transfer.md]

For each parametrization (sp, mup with model.mup_base_width = the narrowest width), width and lr it trains the same
tiny model (2 layers, 4 heads, block 64, batch 16, no biases, tied embeddings, warmup then cosine to lr/10, decay
0.1) from the same seed on the same batches through the trainer's build_step, and reports the val loss (20 fixed
val batches) after `--steps` steps; a diverged run counts as inf. Under μP the lr that is best at the narrow width
should stay best (or near it) at the wide one; under SP the best lr drifts down as the width grows. μP's
narrow row is SP's (at its base width μP is SP bit for bit, tests/test_mup.py), not rerun. `--quick`:
40 steps, two lrs, widths 32 and 64, 2 val batches (a smoke run, seconds per point).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from gptjax.config import Config, DataConfig, MeshConfig, ModelConfig, TrainConfig
from gptjax.data import store
from gptjax.data.loader import WindowSampler, eval_batches
from gptjax.parallel.mesh import make_mesh
from gptjax.prepare.resolve import resolve_data
from gptjax.train.step import build_step

MODEL = dict(n_layer=2, n_head=4, block_size=64, use_bias=False, dropout=0.0)
BATCH = 16


def run_config(parametrization: str, width: int, base_width: int, lr: float, steps: int, vocab_size: int) -> Config:
    """The config of one sweep point."""
    model = ModelConfig(vocab_size=vocab_size, d_model=width, parametrization=parametrization,
                        mup_base_width=base_width, **MODEL)
    train = TrainConfig(batch_size=BATCH, steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=max(steps // 10, 1),
                        weight_decay=0.1, grad_clip=1.0, tensorboard=False)
    return Config(name="mup_transfer", model=model, train=train, mesh=MeshConfig())


def val_loss_after_training(cfg: Config, train: WindowSampler, val: list[np.ndarray]) -> float:
    """Mean val NLL per token after cfg.train.steps steps (the same batches for every config); inf if diverged."""
    step = build_step(cfg, make_mesh(cfg.mesh))
    state = step.init_state()
    for i in range(cfg.train.steps):
        rows = train.windows(np.arange(i * BATCH, (i + 1) * BATCH, dtype=np.int64))
        state, _ = step.train(state, step.to_global(step.format_batch(rows)))
    sums = [step.evaluate(state.params, None, step.to_global(step.format_batch(b))) for b in val]
    loss = sum(float(s["loss"]) for s in sums) / sum(float(s["weight"]) for s in sums)
    return loss if math.isfinite(loss) else math.inf


def best_lr(losses: dict[float, float]) -> float:
    return min(losses, key=losses.get)


def markdown_table(results: dict[tuple[str, int], dict[float, float]], lrs: list[float]) -> str:
    """One row per (parametrization, width): val loss per lr, the best lr in bold."""
    header = "| parametrization | width | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best lr |"
    lines = [header, "|" + "---|" * (len(lrs) + 3)]
    for (parametrization, width), losses in results.items():
        best = best_lr(losses)
        cells = [f"**{losses[lr]:.3f}**" if lr == best else f"{losses[lr]:.3f}" for lr in lrs]
        lines.append(f"| {parametrization} | {width} | " + " | ".join(cells) + f" | {best:g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--widths", default="64,256")
    parser.add_argument("--lrs", default="3e-3,1e-2,3e-2")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--val-batches", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args()
    if args.quick:
        args.widths, args.lrs, args.steps, args.val_batches = "32,64", "3e-3,1e-2", 40, 2
    widths = sorted(int(w) for w in args.widths.split(","))
    lrs = [float(lr) for lr in args.lrs.split(",")]

    data_dir = resolve_data(DataConfig(dataset="shakespeare_char"))
    vocab_size = store.read_manifest(data_dir)["tokenizer"]["vocab_size"]
    train = WindowSampler(store.split_shards(data_dir, "train"), MODEL["block_size"] + 1, seed=0)
    val = eval_batches(data_dir, MODEL["block_size"], BATCH, args.val_batches)
    results: dict[tuple[str, int], dict[float, float]] = {}
    for parametrization in ("sp", "mup"):
        for width in widths:
            if parametrization == "mup" and width == widths[0]:
                results[("mup", width)] = results[("sp", width)]  # at its base width μP is SP bit for bit
                continue
            losses = results.setdefault((parametrization, width), {})
            for lr in lrs:
                start = time.perf_counter()
                cfg = run_config(parametrization, width, widths[0], lr, args.steps, vocab_size)
                losses[lr] = val_loss_after_training(cfg, train, val)
                print(f"{parametrization} width {width} lr {lr:g}: val {losses[lr]:.4f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    table = markdown_table(results, lrs)
    print(table)
    for parametrization in ("sp", "mup"):
        narrow, wide = (best_lr(results[(parametrization, w)]) for w in (widths[0], widths[-1]))
        print(f"{parametrization}: best lr {narrow:g} at width {widths[0]}, {wide:g} at width {widths[-1]}")
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
