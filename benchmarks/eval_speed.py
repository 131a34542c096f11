"""Items/s of loglikelihood scoring: gptjax's engine (LM.loglikelihood) vs lm-eval's HF backend (HFLM), same weights.

A GPT-2 124M-shaped model with random weights is exported twice (gptjax export + HF dir); both backends score the
same requests in the same process, runs alternating (gptjax, HF, gptjax, HF, ...), and the median of each is
reported. Workloads (random words, the real GPT-2 BPE):
- hellaswag-like: a ~70-token context and 4 endings of ~25 tokens each (the engine runs the context once into a KV
  cache and the endings on it);
- mmlu-like: a ~250-token question and 4 one-token answers " A".." D" (the engine runs one row for all 4).
gptjax compiles each batch shape once: a warm-up pass compiles them, and its time is reported apart. Run from the
repository root:

    python benchmarks/eval_speed.py [--items 32] [--repeats 3] [--batch-size 16] [--out benchmarks/results/eval_speed.md]
"""
from __future__ import annotations

import argparse
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert import gpt2_124m_config, gpt2_tokenizer, random_params  # noqa: E402

WORDS = ("the of and to in is was for on that with as by at from his her it an are were which be this had not "
         "but they you she he we all one their has would there what so if out about who them then more when "
         "river mountain city music history science water people time year world house family school").split()


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def hellaswag_like(n_items: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n_items // 4):
        context = random_text(rng, 60)
        out += [(context, " " + random_text(rng, 22)) for _ in range(4)]
    return out


def mmlu_like(n_items: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n_items // 4):
        context = random_text(rng, 230) + "\nAnswer:"
        out += [(context, f" {letter}") for letter in "ABCD"]
    return out


def build_models(root: Path):
    """The gptjax LM and the HF dir of the same random GPT-2 124M weights."""
    from gptjax.api import LM
    from gptjax.interop import hf, native

    cfg = gpt2_124m_config()
    params = random_params(cfg.model, seed=0)
    tokenizer = gpt2_tokenizer()
    lm = LM(cfg, params, tokenizer)
    native.export_native(lm, root / "gptjax")
    hf.export_hf(cfg, params, tokenizer, root / "hf")
    import gptjax

    return gptjax.load(root / "gptjax"), root / "hf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32, help="requests per workload (multiple of 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args()

    import numpy as np
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory() as tmp:
        lm, hf_dir = build_models(Path(tmp))
        hflm = HFLM(pretrained=str(hf_dir), batch_size=args.batch_size, device="cpu", dtype="float32")
        rows = []
        for name, make in (("hellaswag-like", hellaswag_like), ("mmlu-like", mmlu_like)):
            reqs = make(args.items)
            instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(reqs)]
            start = time.perf_counter()
            warm = lm.loglikelihood(reqs, args.batch_size)
            compile_s = time.perf_counter() - start
            ours_s, theirs_s = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                ours = lm.loglikelihood(reqs, args.batch_size)
                ours_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                theirs = hflm.loglikelihood(instances, disable_tqdm=True)
                theirs_s.append(time.perf_counter() - start)
            diff = float(np.max(np.abs(np.array([s for s, _ in ours]) - np.array([s for s, _ in theirs]))))
            rows.append((name, len(reqs), warm.n_rows, compile_s, len(reqs) / statistics.median(ours_s),
                         len(reqs) / statistics.median(theirs_s), diff))

    command = "python benchmarks/eval_speed.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [f"`{command.strip()}` — GPT-2 124M shape, random weights, float32, CPU, batch {args.batch_size}, "
             f"median of {args.repeats} alternating runs",
             "", "| workload | requests | gptjax rows | gptjax first pass (compile) s | gptjax items/s | "
                 "lm-eval HF items/s | speedup | max abs diff |",
             "|---|---|---|---|---|---|---|---|"]
    for name, n, n_rows, compile_s, ours_ips, theirs_ips, diff in rows:
        lines.append(f"| {name} | {n} | {n_rows} | {compile_s:.1f} | {ours_ips:.1f} | {theirs_ips:.1f} | "
                     f"{ours_ips / theirs_ips:.2f}x | {diff:.1e} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
