"""`gptjax serve` under load on CPU: continuous batching against one request at a time, side by side in one run.

A GPT-2 124M-shaped model with random weights (seed 0; `convert.gpt2_124m_config`, `convert.random_params`) and the
real GPT-2 BPE tokenizer (tests/fixtures/gpt2) is served in-process (uvicorn on 127.0.0.1) twice: with
--max-batch 32 (continuous batching) and with --max-batch 1 (one request at a time; the rest wait in the queue).
Both servers compile every shape before serving (warm-up). For 1, 8 and 32 concurrent clients, each client streams
its share of the requests back to back (`/v1/completions`, stream=true, greedy, prompts of 16-64 random token ids,
`--new-tokens` each). Reported: generated tokens per second over the level's wall time, and the p50/p99 time to
first token (the first streamed text). Run from the repository root:

    python benchmarks/serve_cpu.py [--new-tokens 32] [--requests 4 16 32] [--out benchmarks/results/serve_cpu.md]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "serve_cpu.md"
FIGURE = REPO_ROOT / "docs" / "serve_cpu.png"
CLIENTS = (1, 8, 32)
CONTEXT = 128
MODEL_NAME = "gpt2-124m-random"


def build_lm():
    """The random GPT-2 124M LM with the GPT-2 BPE tokenizer."""
    import jax
    import jax.numpy as jnp
    from convert import gpt2_124m_config, random_params

    from gptjax.api import LM
    from gptjax.data.tokenizer import Gpt2BpeAdapter

    cfg = gpt2_124m_config()
    params = random_params(cfg.model, 0)
    return LM(cfg, jax.tree_util.tree_map(jnp.asarray, params),
              Gpt2BpeAdapter.from_dir(REPO_ROOT / "tests" / "fixtures" / "gpt2"))


class Server:
    """`gptjax serve` in a thread on a free local port."""

    def __init__(self, lm, max_batch: int):
        import socket

        import uvicorn

        from gptjax.serve.app import ServeSettings, create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        app = create_app(lm, ServeSettings(MODEL_NAME, max_batch=max_batch, max_context=CONTEXT, max_queue=64,
                                           warm_up=True))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()


def stream_one(url: str, prompt_ids: list[int], new_tokens: int) -> tuple[float, int]:
    """(seconds to the first streamed text, tokens generated) of one streamed greedy completion."""
    import httpx

    body = {"model": MODEL_NAME, "prompt": prompt_ids, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first if first is not None else time.perf_counter() - start, tokens


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def run_level(url: str, prompts: list[list[int]], clients: int, new_tokens: int) -> dict:
    """`clients` threads streaming `prompts` (split evenly, each client's back to back): throughput and TTFT."""
    shares = [prompts[i::clients] for i in range(clients)]

    def client(share):
        return [stream_one(url, p, new_tokens) for p in share]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, shares) for r in rs]
    wall = time.perf_counter() - start
    ttfts = [t for t, _ in results]
    tokens = sum(n for _, n in results)
    return {"clients": clients, "requests": len(prompts), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99)}


def random_prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab - 1, int(rng.integers(16, 65))).tolist() for _ in range(n)]


def markdown(rows: list[dict], args, seconds: float) -> str:
    lines = [
        "# gptjax serve on CPU: continuous batching vs one request at a time",
        "",
        f"Command: `{args.command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; total run {seconds:.0f} s.  ",
        f"GPT-2 124M shape (random weights, float32), context {CONTEXT}, prompts of 16-64 tokens, "
        f"{args.new_tokens} greedy tokens per request, streamed.",
        "",
        "| server | clients | requests | tokens | wall s | tokens/s | TTFT p50 s | TTFT p99 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['tokens']} | {r['wall_s']:.1f} | "
                     f"{r['tokens_per_s']:.1f} | {r['ttft_p50_s']:.2f} | {r['ttft_p99_s']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode, marker in (("continuous batching (--max-batch 32)", "o"), ("one at a time (--max-batch 1)", "s")):
        mine = [r for r in rows if r["mode"] == mode]
        clients = [r["clients"] for r in mine]
        left.plot(clients, [r["tokens_per_s"] for r in mine], marker=marker, label=mode)
        right.plot(clients, [r["ttft_p50_s"] for r in mine], marker=marker, label=f"p50, {mode.split(' (')[0]}")
        right.plot(clients, [r["ttft_p99_s"] for r in mine], marker=marker, linestyle="--",
                   label=f"p99, {mode.split(' (')[0]}")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="generated tokens / s", title="throughput")
    right.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="seconds",
              title="time to first token")
    for ax in (left, right):
        ax.set_xticks(list(CLIENTS), [str(c) for c in CLIENTS])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("gptjax serve, GPT-2 124M shape on CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, nargs=3, default=(4, 16, 32),
                        help="requests sent at 1, 8 and 32 clients")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    args = parser.parse_args()
    args.command = ("python benchmarks/serve_cpu.py " + shlex.join(sys.argv[1:])).strip()
    started = time.perf_counter()
    lm = build_lm()
    rows = []
    for mode, max_batch in (("continuous batching (--max-batch 32)", 32), ("one at a time (--max-batch 1)", 1)):
        t = time.perf_counter()
        server = Server(lm, max_batch)
        print(f"{mode}: ready in {time.perf_counter() - t:.0f} s", flush=True)
        try:
            for clients, n in zip(CLIENTS, args.requests):
                row = {"mode": mode, **run_level(server.url, random_prompts(n, lm.config.vocab_size, clients),
                                                 clients, args.new_tokens)}
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            server.stop()
    text = markdown(rows, args, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    plot(rows, args.figure)
    print(text)


if __name__ == "__main__":
    main()
