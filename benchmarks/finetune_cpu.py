"""Finetuning cost on CPU: full vs LoRA finetuning of the GPT-2-124M shape (tokens/s, peak memory, checkpointed
bytes), and a DPO step with stored reference log-probs vs a live reference model.

    python benchmarks/finetune_cpu.py [--steps 4] [--repeats 2] [--block 256] [--batch 4] \\
        [--out benchmarks/results/finetune_cpu.md]

Each variant runs in its own process (peak RSS is per process), variants alternating over `--repeats` rounds; the
table reports the median over rounds of each round's median step time, and the largest peak RSS. Models are
random-init (the shapes decide the cost), batches random token ids; the steps are `build_step`'s, the ones
`gptjax train` runs, with the trainable mask and frozen reference of the config.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {
    "SFT, full finetune": dict(objective="sft", freeze="none", lora_rank=0, reference="precomputed"),
    "SFT, LoRA r=8 on q,v": dict(objective="sft", freeze="lora", lora_rank=8, reference="precomputed"),
    "SFT, LoRA r=8 on q,k,v,o,mlp": dict(objective="sft", freeze="lora", lora_rank=8, reference="precomputed",
                                         targets=("q", "k", "v", "o", "mlp")),
    "DPO, stored reference log-probs": dict(objective="dpo", freeze="none", lora_rank=0, reference="precomputed"),
    "DPO, live reference model": dict(objective="dpo", freeze="none", lora_rank=0, reference="live"),
}

WORKER = r'''
import json, resource, sys, time
import jax, numpy as np
spec = json.loads(sys.argv[1])
import flax.linen as nn
from gptjax.config import Config, FinetuneConfig, ModelConfig, TrainConfig, MeshConfig
from gptjax.finetune.batches import example_batch
from gptjax.parallel.mesh import configure_cpu_devices, make_mesh
configure_cpu_devices(1, spec["batch"])
from gptjax.checkpoint import saved_params
from gptjax.finetune.freeze import trainable_mask
from gptjax.model.transformer import abstract_params
from gptjax.train.step import build_step
v = spec["variant"]
model = ModelConfig(vocab_size=50257, block_size=spec["block"], n_layer=12, n_head=12, d_model=768,
                    lora_rank=v["lora_rank"], lora_alpha=16.0, lora_targets=tuple(v.get("targets", ("q", "v"))))
cfg = Config(model=model, train=TrainConfig(objective=v["objective"], init_from="base", batch_size=spec["batch"]),
             finetune=FinetuneConfig(task="preference" if v["objective"] == "dpo" else "instruction",
                                     freeze=v["freeze"], reference=v["reference"]), mesh=MeshConfig())
shapes = nn.unbox(abstract_params(cfg.model))
mask = trainable_mask(cfg.finetune.freeze, cfg.model, shapes)
live = v["objective"] == "dpo" and v["reference"] == "live"
step = build_step(cfg, make_mesh(cfg.mesh), trainable=mask, frozen_example=shapes if live else None)
state = step.init_state()
if live:
    state = state.replace(frozen=jax.tree_util.tree_map(lambda x: x.copy(), state.params))
rng = np.random.default_rng(0)
batch = example_batch(v["objective"], spec["batch"], spec["block"])
for key in ("tokens", "chosen", "rejected"):
    if key in batch:
        batch[key] = rng.integers(0, 50257, batch[key].shape, dtype=np.int32)
if v["objective"] == "dpo" and not live:
    batch["ref_chosen"] = rng.normal(-200, 10, spec["batch"]).astype(np.float32)
    batch["ref_rejected"] = rng.normal(-200, 10, spec["batch"]).astype(np.float32)
batch = step.to_global(batch)
times = []
for i in range(1 + spec["steps"]):
    start = time.perf_counter()
    state, metrics = step.train(state, batch)
    float(metrics["loss"])
    if i:
        times.append(time.perf_counter() - start)
saved = saved_params(state.params, mask)
print(json.dumps({"median_s": float(np.median(times)),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "trainable": int(sum(x.size for x in jax.tree_util.tree_leaves(saved))),
                  "saved_mb": sum(x.size * 4 for x in jax.tree_util.tree_leaves(saved)) / 2**20,
                  "tokens_per_step": spec["batch"] * spec["block"] * (2 if v["objective"] == "dpo" else 1)}))
'''


def run_variant(name: str, steps: int, block: int, batch: int) -> dict:
    spec = {"variant": VARIANTS[name], "steps": steps, "block": block, "batch": batch}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=REPO, capture_output=True, text=True,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    rounds: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name in VARIANTS:
            rounds[name].append(run_variant(name, args.steps, args.block, args.batch))
            print(name, rounds[name][-1], file=sys.stderr)
    lines = [f"GPT-2-124M shape (12x768, vocab 50257), block {args.block}, batch {args.batch}, "
             f"{args.steps} timed steps "
             f"after 1 warm-up, median of {args.repeats} alternating rounds, one process per run.", "",
             "| variant | s/step | tokens/s | peak RSS (MB) | trainable params | checkpointed params (MB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, results in rounds.items():
        seconds = float(np.median([r["median_s"] for r in results]))
        first = results[0]
        lines.append(f"| {name} | {seconds:.2f} | {first['tokens_per_step'] / seconds:.0f} | "
                     f"{max(r['peak_rss_mb'] for r in results):.0f} | {first['trainable'] / 1e6:.2f}M | "
                     f"{first['saved_mb']:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(f"`python benchmarks/finetune_cpu.py --steps {args.steps} --repeats {args.repeats} "
                                  f"--block {args.block} --batch {args.batch}`\n\n{table}\n")


if __name__ == "__main__":
    main()
