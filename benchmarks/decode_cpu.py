"""KV-cache decoding speed of gptjax against Hugging Face transformers `generate`, side by side in one process.

A GPT-2 124M-shaped model with random weights (seed 0) is built once in gptjax's layout and copied into an HF
GPT2LMHeadModel (`gptjax.interop.hf.to_hf_tensors`). Every configuration runs gptjax and HF alternately
(A B A B ...), one untimed warm-up each (compilation), and reports medians. Greedy float32 tokens must be identical
between the two (the script fails otherwise). Also measured: the machine's memory read bandwidth (the best of a
numpy and a jitted jax sum over a 512 MiB array), which bounds batch-1 decoding at bandwidth / weight bytes per
token; prefill tokens/s on a long prompt; the bfloat16-weights option (`LM.with_dtype("bfloat16")`) with its
agreement with float32's greedy tokens; and gptjax's tokens-per-jit-call lever. Run from the repository root:

    python benchmarks/decode_cpu.py [--rounds 3] [--batches 1 8 32] [--threads N] \\
        [--out benchmarks/results/decode_cpu.md]

On a loaded machine use --threads 1: with two threads each and another job on a core, torch's thread pool
stalls and HF's rate collapses (~10x), which says nothing about either implementation.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "decode_cpu.md"
PROMPT_LEN = 16


def read_bandwidth_gbs(mib: int = 512, repeats: int = 5) -> dict:
    """Sustained read bandwidth (GB/s): the best of `repeats` full sums of a float32 array, numpy and jitted jax."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = np.ones(mib * 2 ** 20 // 4, np.float32)
    best = {}
    for name, fn in (("numpy", lambda: a.sum()), ("jax", None)):
        if name == "jax":
            x = jnp.asarray(a)
            summed = jax.jit(jnp.sum)
            fn = lambda: summed(x).block_until_ready()
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        best[name] = a.nbytes / min(times) / 1e9
    return best


def build(seed: int = 0):
    """(gptjax LM, HF model) sharing one set of random GPT-2 124M weights."""
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers
    from convert import gpt2_124m_config, random_params

    from gptjax.api import LM
    from gptjax.interop import hf

    cfg = gpt2_124m_config()
    params_np = random_params(cfg.model, seed)
    lm = LM(cfg, _tree_map(jnp.asarray, params_np), None)
    hf_cfg = {k: v for k, v in hf.hf_config(cfg.model, None, "float32").items()
              if k not in ("architectures", "dtype", "torch_dtype")}
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_cfg)).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in hf.to_hf_tensors(cfg.model, params_np).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # lm_head is tied
    return lm, model


def _tree_map(fn, tree):
    import jax

    return jax.tree_util.tree_map(fn, tree)


def gptjax_generate(lm, prompts, new_tokens: int, chunk: int = 0):
    return lm.generate_ids(prompts, new_tokens, temperature=0.0, chunk=chunk)


def hf_generate(model, prompts, new_tokens: int):
    import torch

    ids = torch.tensor(prompts)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[:, ids.shape[1]:].tolist()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def alternate(runs: dict, rounds: int) -> dict:
    """{name: (median seconds, all seconds, last output)} running each callable once untimed, then A B A B."""
    outputs = {name: fn() for name, fn in runs.items()}
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            seconds, outputs[name] = timed(fn)
            times[name].append(seconds)
    return {name: (statistics.median(t), t, outputs[name]) for name, t in times.items()}


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """(share of positions with equal tokens, mean share of each row before its first difference)."""
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb)) / sum(len(r) for r in a)
    prefix = []
    for ra, rb in zip(a, b):
        n = next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), len(ra))
        prefix.append(n / len(ra))
    return same, statistics.mean(prefix)


def prefill_runs(lm, model, length: int):
    """Callables timing one prefill of a `length`-token prompt: gptjax's jitted prefill (fresh cache, first token),
    HF's forward with use_cache=True (logits + past_key_values)."""
    import jax
    import numpy as np
    import torch

    from gptjax.generate import SamplingParams, left_pad, prefill

    prompt = np.random.default_rng(2).integers(0, lm.config.vocab_size, length).tolist()
    tokens, positions, segments = left_pad([prompt])
    ids = torch.tensor([prompt])

    def ours():
        state = prefill(lm.params, tokens, positions, segments, jax.random.PRNGKey(0), model=lm.model,
                        sp=SamplingParams(0.0), max_len=tokens.shape[1] + 1, eot_id=-1)
        return int(jax.block_until_ready(state.last_B)[0])

    def theirs():
        with torch.inference_mode():
            return int(model(ids, use_cache=True).logits[0, -1].argmax())

    return {"gptjax": ours, "hf": theirs}


def param_bytes(lm) -> int:
    import jax

    return sum(x.nbytes for x in jax.tree_util.tree_leaves(lm.params))


def markdown(rows, levers, prefill_rows, bf16, bandwidth, weight_bytes, args, versions) -> str:
    bw = max(bandwidth.values())
    bound = bw * 1e9 / weight_bytes
    lines = [
        "# Decoding speed on CPU: gptjax vs Hugging Face transformers (GPT-2 124M shape)", "",
        f"Command (from the repository root): `{args.command}`", "",
        f"Model: GPT-2 small shape (12 layers, d_model 768, 12 heads, vocab 50257, tied head), "
        "random weights (seed 0), "
        f"the same weights in both. Prompts: {PROMPT_LEN} random token ids per row (equal lengths, no padding); "
        f"{args.new_tokens} greedy new tokens per row, no stop token. gptjax: `LM.generate_ids(temperature=0)` "
        f"(KV cache, all new tokens in one jit call unless noted); HF: `GPT2LMHeadModel.generate(do_sample=False)` "
        f"(KV cache), torch threads = {versions['torch_threads']}. Each cell: median of {args.rounds} timed runs after "
        "one untimed warm-up, the two implementations alternating. tokens/s = rows x new tokens / wall time of the "
        "whole call (prefill included).", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs visible, {platform.platform()}, Python "
        f"{platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "torch_threads")
        + f"; XLA_FLAGS: {os.environ.get('XLA_FLAGS') or '(none)'}. Load average at start / end: {args.load_start} / "
        f"{os.getloadavg()[0]:.2f}.", "",
        "## Greedy decoding, float32", "",
        "| batch | gptjax tok/s | HF tok/s | gptjax / HF | identical tokens |",
        "|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['gptjax']:,.1f} | {r['hf']:,.1f} | {r['gptjax'] / r['hf']:.2f}x | "
                     f"{'yes' if r['identical'] else 'NO'} |")
    lines += ["", "## Memory-bandwidth bound at batch 1", "",
              f"Read bandwidth measured: {bandwidth['numpy']:.1f} GB/s (numpy sum), {bandwidth['jax']:.1f} GB/s "
              f"(jitted jax sum) of a 512 MiB float32 array. float32 weights read per token: "
              f"{weight_bytes / 1e6:.0f} MB "
              f"(every parameter once; the tied embedding is the output projection). Bound: {bw:.1f} GB/s / "
              f"{weight_bytes / 1e6:.0f} MB = **{bound:.0f} tokens/s**; gptjax batch 1 reaches "
              f"{rows[0]['gptjax'] / bound:.0%} of it ({rows[0]['gptjax'] * weight_bytes / 1e9:.1f} GB/s of weights), "
              f"HF {rows[0]['hf'] / bound:.0%}. Twice HF's batch-1 rate would need "
              f"{2 * rows[0]['hf'] * weight_bytes / 1e9:.1f} GB/s of float32 weights."]
    if bf16:
        lines += ["",
                  "## bfloat16 weights (`gptjax.load(path, dtype=\"bfloat16\")`, `gptjax generate --dtype bfloat16`)",
                  "",
                  f"Weights stored and read as bfloat16 ({bf16['bytes'] / 1e6:.0f} MB per token, bound "
                  f"{bw * 1e9 / bf16['bytes']:.0f} tokens/s); matmuls accumulate in float32, norms, softmax and "
                  "logits in float32, the residual stream and KV cache in bfloat16. HF: the same model "
                  "`.to(torch.bfloat16)`.", "",
                  "| batch | gptjax bf16 tok/s | gptjax fp32 tok/s | HF bf16 tok/s | positions equal to fp32 | "
                  "row share before the first difference |", "|---:|---:|---:|---:|---:|---:|"]
        for r in bf16["rows"]:
            lines.append(f"| {r['batch']} | {r['gptjax']:,.1f} | {r['fp32']:,.1f} | {r['hf']:,.1f} | {r['same']:.1%} | "
                         f"{r['prefix']:.1%} |")
        lines += ["", f"gptjax bf16 vs HF bf16 greedy tokens: {bf16['vs_hf'][0]:.1%} of positions equal, "
                      f"{bf16['vs_hf'][1]:.1%} of each row before the first difference (random weights give flat "
                      "next-token distributions, so one bfloat16 rounding flips a greedy choice early; after a flip "
                      "the rows continue from different prefixes)."]
    lines += ["", f"## Prefill ({args.prefill_len}-token prompt, batch 1)", "",
              "| implementation | ms | tokens/s |", "|---|---:|---:|"]
    for name, seconds in prefill_rows.items():
        lines.append(f"| {name} | {seconds * 1e3:.1f} | {args.prefill_len / seconds:,.0f} |")
    lines += ["", "## gptjax: new tokens per jit call (batch 1)", "",
              "| tokens per call (`chunk`) | tok/s |", "|---:|---:|"]
    for chunk, tps in levers.items():
        lines.append(f"| {chunk} | {tps:,.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument("--bf16-batches", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for each implementation (0: every CPU); 1 also makes XLA's dots single-threaded")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.command = "python benchmarks/decode_cpu.py " + shlex.join(sys.argv[1:])
    args.load_start = f"{os.getloadavg()[0]:.2f}"
    if args.threads == 1:  # before JAX starts its backend
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

    import flax
    import jax
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    versions = {"jax": jax.__version__, "flax": flax.__version__, "torch": torch.__version__,
                "transformers": transformers.__version__, "torch_threads": torch.get_num_threads()}
    bandwidth = read_bandwidth_gbs()
    print("read bandwidth GB/s", bandwidth, flush=True)
    lm, model = build()
    weight_bytes = param_bytes(lm) - lm.params["pos_embedding"].nbytes + lm.params["pos_embedding"][0].nbytes
    rng = np.random.default_rng(1)
    rows, fp32_outputs = [], {}
    for batch in args.batches:
        prompts = rng.integers(0, lm.config.vocab_size, (batch, PROMPT_LEN)).tolist()
        result = alternate({"gptjax": lambda: gptjax_generate(lm, prompts, args.new_tokens),
                            "hf": lambda: hf_generate(model, prompts, args.new_tokens)}, args.rounds)
        identical = result["gptjax"][2] == result["hf"][2]
        row = {"batch": batch, "identical": identical,
               **{name: batch * args.new_tokens / r[0] for name, r in result.items()}}
        rows.append(row)
        fp32_outputs[batch] = (prompts, result["gptjax"][2])
        print(row, {k: [round(t, 3) for t in r[1]] for k, r in result.items()}, flush=True)
        if not identical:
            raise SystemExit(f"batch {batch}: gptjax and HF greedy float32 tokens differ")

    bf16 = None
    if args.bf16_batches:
        lm16 = lm.with_dtype("bfloat16")
        model16 = copy.deepcopy(model).to(torch.bfloat16)
        bf16 = {"bytes": weight_bytes // 2, "rows": []}
        agree_hf = []
        for batch in args.bf16_batches:
            prompts, fp32_tokens = fp32_outputs.get(batch) or (
                rng.integers(0, lm.config.vocab_size, (batch, PROMPT_LEN)).tolist(), None)
            if fp32_tokens is None:
                fp32_tokens = gptjax_generate(lm, prompts, args.new_tokens)
            result = alternate({"gptjax": lambda: gptjax_generate(lm16, prompts, args.new_tokens),
                                "hf": lambda: hf_generate(model16, prompts, args.new_tokens)}, args.rounds)
            same, prefix = agreement(result["gptjax"][2], fp32_tokens)
            agree_hf.append(agreement(result["gptjax"][2], result["hf"][2]))
            fp32_row = next((r["gptjax"] for r in rows if r["batch"] == batch), float("nan"))
            bf16["rows"].append({"batch": batch, "gptjax": batch * args.new_tokens / result["gptjax"][0],
                                 "hf": batch * args.new_tokens / result["hf"][0], "fp32": fp32_row,
                                 "same": same, "prefix": prefix})
            print("bf16", bf16["rows"][-1], flush=True)
        bf16["vs_hf"] = tuple(statistics.mean(a[i] for a in agree_hf) for i in range(2))
        del model16

    result = alternate(prefill_runs(lm, model, args.prefill_len), args.rounds + 2)
    prefill_rows = {"gptjax (jit prefill into a fresh KV cache)": result["gptjax"][0],
                    "HF (forward, use_cache=True)": result["hf"][0]}
    print("prefill", prefill_rows, flush=True)

    prompts = fp32_outputs[args.batches[0]][0][:1]
    chunks = {1: 1, 16: 16, args.new_tokens: 0}
    result = alternate({c: (lambda c=c: gptjax_generate(lm, prompts, args.new_tokens, chunk=chunks[c]))
                        for c in chunks}, args.rounds)
    levers = {c: args.new_tokens / r[0] for c, r in result.items()}
    print("chunks", levers, flush=True)

    text = markdown(rows, levers, prefill_rows, bf16, bandwidth, weight_bytes, args, versions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
