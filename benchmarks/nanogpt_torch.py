"""A PyTorch reference with nanoGPT's architecture and training step (eager, fp32), for side-by-side timing.

Written for this benchmark (not copied): pre-LN GPT, learned positions, GELU MLP, tied head, AdamW with
weight decay on >=2-D weights, grad clipping — the same work per step as nanoGPT's train.py on CPU.
Usage: python benchmarks/nanogpt_torch.py --layers 4 --heads 4 --width 128 --block 64 --batch 12 --steps 30
Prints one JSON line with per-step milliseconds.

With --data DATA_DIR (a `gptjax prepare` output) it instead trains nanoGPT's recipe on the real tokens (nanoGPT's
init, warmup + cosine lr 1e-3 -> 1e-4, beta2 0.99, --seed) and prints the loss over the whole val split in
consecutive windows, as `gptjax eval` measures it; benchmarks/quality_cpu.py uses this for the quality comparison.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width, bias=False), nn.LayerNorm(width, bias=False)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.fc = nn.Linear(width, 4 * width, bias=False)
        self.out = nn.Linear(4 * width, width, bias=False)
        self.dropout = dropout

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.proj(y.transpose(1, 2).reshape(b, t, c)), self.dropout, self.training)
        return x + F.dropout(self.out(F.gelu(self.fc(self.ln2(x)))), self.dropout, self.training)


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, layers: int, heads: int, width: int, dropout: float):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.wte.weight
        self.dropout = dropout

    def forward(self, idx, targets, reduction: str = "mean"):
        x = F.dropout(self.wte(idx) + self.wpe(torch.arange(idx.shape[1])), self.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)

    def init_like_nanogpt(self, n_layer: int) -> None:
        """N(0, 0.02) for linears and embeddings, 0.02/sqrt(2 n_layer) for the residual projections."""
        for name, param in self.named_parameters():
            if param.dim() >= 2:
                std = 0.02 / (2 * n_layer) ** 0.5 if name.endswith(("proj.weight", "out.weight")) else 0.02
                torch.nn.init.normal_(param, mean=0.0, std=std)


def nanogpt_lr(step: int, steps: int, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    ratio = min((step - warmup) / max(steps - warmup, 1), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def train_and_eval(args, model: GPT, opt: torch.optim.Optimizer) -> dict:
    from gptjax.data import store

    def split(name):
        return np.concatenate([store.read_tokens(p) for p in store.split_shards(args.data, name)]).astype(np.int64)

    train, val = split("train"), split("val")
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = nanogpt_lr(step, args.steps)
        starts = rng.integers(0, len(train) - args.block, args.batch)
        rows = torch.from_numpy(np.stack([train[s:s + args.block + 1] for s in starts]))
        loss = model(rows[:, :-1], rows[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    train_seconds = time.perf_counter() - start
    model.eval()
    n_windows = (len(val) - 1) // args.block
    nll = 0.0
    with torch.no_grad():
        for first in range(0, n_windows, 64):
            rows = torch.from_numpy(np.stack([val[i * args.block:i * args.block + args.block + 1]
                                              for i in range(first, min(first + 64, n_windows))]))
            nll += float(model(rows[:, :-1], rows[:, 1:], reduction="sum"))
    return {"seed": args.seed, "val_loss": nll / (n_windows * args.block), "train_seconds": train_seconds}


def main() -> None:
    p = argparse.ArgumentParser()
    for name, default in (("layers", 4), ("heads", 4), ("width", 128), ("block", 64), ("batch", 12), ("steps", 30),
                          ("warmup", 5), ("threads", 2)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--data", default="", help="a prepared data dir: train on it and print the val-split loss")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vocab = 65
    if args.data:
        from gptjax.data import store
        vocab = int(store.read_manifest(args.data)["tokenizer"]["vocab_size"])
    model = GPT(vocab, args.block, args.layers, args.heads, args.width, args.dropout)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    if args.data:
        model.init_like_nanogpt(args.layers)
        print(json.dumps(train_and_eval(args, model, opt)))
        return
    data = torch.randint(0, 65, (args.warmup + args.steps, args.batch, args.block + 1))
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss = model(data[i, :, :-1], data[i, :, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    print(json.dumps({"ms_per_step": [1000 * t for t in times], "median_ms": 1000 * float(np.median(times))}))


if __name__ == "__main__":
    main()
