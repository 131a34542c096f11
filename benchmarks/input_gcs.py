"""Training input throughput straight from gs:// (the local GCS emulator) against local files.

A synthetic prepared dataset of GPT-2-vocabulary uint16 tokens (--tokens, in --shards shards) is written locally and
uploaded to tests/gcs_emulator.py (in memory, on a free localhost port). The training iterator
(`gptjax.data.loader.train_iterator`, one process) then delivers --steps batches at the batch shape of
experiments/gpt2_124m.py (480 rows of 1024 + 1 tokens) as fast as they are taken, from:

- local: the memory-mapped local shards;
- gs://, cache holds it: byte ranges through a block cache larger than the dataset (hits grow as blocks are reused);
- gs://, cache 1/4 of it: `data.remote_cache_gb` a quarter of the dataset, so most blocks are read again.

- the same with a consumer that spends --step-ms on each batch, as a training step would.

It reports tokens/s delivered (after the first batch), the time the consumer waited for each batch, the block
cache's hit rate (blocks held when a batch asked for them) and the share of blocks held or being read ahead when
asked for. gpt2_124m's target step (1.33 s for 480 x 1024 tokens on a v5e-4) needs 370k tokens/s.

    python benchmarks/input_gcs.py [--tokens 64000000] [--steps 60] [--step-ms 400] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gptjax.testing import gcs

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "input_gcs.md"
BUCKET = "gptjax-bench"
BATCH, BLOCK_SIZE = 480, 1024  # experiments/gpt2_124m.py
VOCAB = 50304
FINGERPRINT = "00" * 32


def start_emulator() -> subprocess.Popen:
    """The GCS emulator on a free port, this process's environment pointed at it (as the gs:// tests do)."""
    try:
        proc, url = gcs.start_emulator(BUCKET)
    except RuntimeError as error:
        raise SystemExit(str(error)) from None
    os.environ.update(gcs.emulator_env(url))
    return proc


def write_dataset(directory: Path, n_tokens: int, n_shards: int) -> int:
    """A prepared directory of random tokens (train split only); returns its shard bytes."""
    from gptjax.data import store

    rng = np.random.default_rng(0)
    shards, total = [], 0
    for i in range(n_shards):
        name = f"train-{i:03d}.bin"
        store.write_tokens(directory / name, rng.integers(0, VOCAB, n_tokens // n_shards, dtype=np.uint16), FINGERPRINT)
        shards.append({"file": name})
        total += (directory / name).stat().st_size
    manifest = {"tokenizer": {"kind": "gpt2_bpe", "fingerprint": FINGERPRINT, "vocab_size": VOCAB, "eot_id": 50256},
                "splits": {"train": {"shards": shards, "n_tokens": n_tokens, "n_bytes": 4 * n_tokens}}}
    (directory / store.MANIFEST).write_text(json.dumps(manifest))
    return total


def delivered(data_dir: Path, data, steps: int, step_s: float = 0.0) -> dict:
    """Tokens/s the training iterator delivers over `steps` batches (after the first one) to a consumer that spends
    `step_s` on each, how long it waited for each, and the block cache's counts over them (none for local data)."""
    from gptjax.data import loader, remote

    iterator = loader.train_iterator(data_dir, BLOCK_SIZE, BATCH, seed=0, n_steps=steps + 1, data=data)
    next(iterator)
    cache = remote.shared_cache(remote.cache_bytes(data))
    before = dataclasses.replace(cache.stats)
    waited = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        time.sleep(step_s)
        asked = time.perf_counter()
        next(iterator)
        waited += time.perf_counter() - asked
    seconds = time.perf_counter() - start
    after = dataclasses.replace(cache.stats)
    remote.close_caches()  # the reads still ahead, before the next source or the emulator's end
    requested = after.requested - before.requested
    return {"tokens_per_s": steps * BATCH * BLOCK_SIZE / seconds, "wait_ms": 1000 * waited / steps,
            "hit_rate": (after.hits - before.hits) / requested if requested else None,
            "ready_rate": (after.hits + after.in_flight - before.hits - before.in_flight) / requested
            if requested else None, "read_mb": (after.bytes_read - before.bytes_read) / 1e6,
            "peak_mb": after.peak_bytes / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64_000_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--step-ms", type=int, default=400, help="the simulated step of the last measurement")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    emulator = start_emulator()
    try:
        import fsspec

        from gptjax.config import DataConfig
        from gptjax.data.sources import local_data_dir

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "data"
            local.mkdir()
            size = write_dataset(local, args.tokens, args.shards)
            url = f"gs://{BUCKET}/data"
            fsspec.filesystem("gs").put(str(local), url, recursive=True)
            os.environ["GPTJAX_CACHE"] = str(Path(tmp) / "cache")
            rows = []
            quarter = f"gs://, cache 1/4 of it, {args.step_ms} ms steps"
            for name, cache_gb, step_s in (("local", None, 0), ("gs://, cache holds it", 2 * size / 2**30, 0),
                                           ("gs://, cache 1/4 of it", size / 4 / 2**30, 0),
                                           (quarter, size / 4 / 2**30, args.step_ms / 1000)):
                data = DataConfig(dataset="", remote_cache_gb=cache_gb or 1.0)
                source = local if cache_gb is None else local_data_dir(url, data)
                rows.append((name, delivered(source, data, args.steps, step_s)))
                print(name, rows[-1], file=sys.stderr, flush=True)
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    lines = ["# Training input from gs:// (GCS emulator) vs local files\n",
             f"`python benchmarks/input_gcs.py --tokens {args.tokens} --shards {args.shards} --steps {args.steps} "
             f"--step-ms {args.step_ms}` on {platform.machine()}, {os.cpu_count()} CPUs; {size / 1e6:.0f} MB of uint16 "
             f"tokens; batches of {BATCH} x {BLOCK_SIZE + 1} tokens (experiments/gpt2_124m.py), one process, default "
             f"read-ahead, taken as fast as delivered (the last row: after a simulated step of {args.step_ms} ms "
             f"each). gpt2_124m's target step needs 370k tokens/s.\n",
             "| source | tokens/s delivered | waited per batch | cache hit rate | blocks ready when asked | MB read | "
             "cache peak MB |", "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        pct = (lambda v: "—" if v is None else f"{100 * v:.0f}%")
        lines.append(f"| {name} | {r['tokens_per_s'] / 1e3:,.0f}k | {r['wait_ms']:.1f} ms | {pct(r['hit_rate'])} | "
                     f"{pct(r['ready_rate'])} | {r['read_mb']:.0f} | {r['peak_mb']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
