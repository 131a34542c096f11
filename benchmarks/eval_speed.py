"""Items/s of loglikelihood scoring: gptjax's engine (LM.loglikelihood) vs lm-eval's HF backend (HFLM), same weights.

A GPT-2 124M-shaped model with random weights is exported twice (gptjax export + HF dir); both backends score the
same requests in the same process, runs alternating (gptjax, HF, gptjax, HF, ...), and the median of each is
reported. Workloads (random words, the real GPT-2 BPE):
- hellaswag-like: a ~70-token context and 4 endings of ~25 tokens each (the engine runs the context once into a KV
  cache and the endings on it);
- mmlu-0shot-like, mmlu-5shot-like: lm-eval's MMLU prompts (`gptjax.eval.tasks.mmlu`, as lm-eval's default mmlu
  task builds them) for subjects of 8 questions: the subject header, 0 or 5 dev examples (question, choices
  A-D, "Answer: X"), the question, and 4 one-token answers " A".." D" (the engine runs one row per question; with
  5 shots the header and dev examples, shared by a subject's questions, run once into a KV cache and each question
  on it). Real subjects have 100-1,500 questions, so 8 per subject amortizes the shared prefix less than MMLU does.
gptjax compiles each batch shape once: a warm-up pass compiles them, and its time is reported apart. Run from the
repository root:

    python benchmarks/eval_speed.py [--items 32] [--repeats 3] [--batch-size 16] \\
        [--out benchmarks/results/eval_speed.md]
"""
from __future__ import annotations

import argparse
import functools
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


def mmlu_like(n_items: int, shots: int, seed: int = 0, per_subject: int = 8) -> list[tuple[str, str]]:
    """Requests as lm-eval's MMLU makes them: per subject, header + `shots` dev examples before every question."""
    from gptjax.eval.tasks import mmlu

    rng = random.Random(seed)

    def csv_row() -> list[str]:
        return ([random_text(rng, rng.randint(20, 80))] + [random_text(rng, rng.randint(2, 15)) for _ in range(4)]
                + [rng.choice(mmlu.LETTERS)])

    out = []
    for start in range(0, n_items // 4, per_subject):
        prefix = mmlu.fewshot_prefix(f"subject_{start // per_subject}", [csv_row() for _ in range(shots)], shots)
        for _ in range(min(per_subject, n_items // 4 - start)):
            context = prefix + mmlu.question_block(csv_row())
            out += [(context, f" {letter}") for letter in mmlu.LETTERS]
    return out


def choices(scores) -> list[int]:
    """The argmax choice of each group of 4 requests (acc's prediction)."""
    import numpy as np

    return np.array([s for s, _ in scores]).reshape(-1, 4).argmax(axis=1).tolist()


def build_models(root: Path):
    """The gptjax LM and the HF dir of the same random GPT-2 124M weights."""
    from gptjax import export
    from gptjax.api import LM
    from gptjax.interop import hf

    cfg = gpt2_124m_config()
    params = random_params(cfg.model, seed=0)
    tokenizer = gpt2_tokenizer()
    lm = LM(cfg, params, tokenizer)
    export.export_native(lm, root / "gptjax")
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

    from gptjax.eval import requests as eval_requests

    with tempfile.TemporaryDirectory() as tmp:
        lm, hf_dir = build_models(Path(tmp))
        hflm = HFLM(pretrained=str(hf_dir), batch_size=args.batch_size, device="cpu", dtype="float32")

        def unshared(reqs: list[tuple[str, str]]):
            """The same engine with every row run whole (no KV-cache reuse of shared prefixes), tokenizing included."""
            pairs = [eval_requests.encode_pair(lm.tokenizer.encode, c, x, lm.tokenizer.eot_id) for c, x in reqs]
            return eval_requests.score_pairs(lm.model, lm.params, pairs, lm.config.block_size, args.batch_size,
                                             share_stems=False)
        rows = []
        workloads = (("hellaswag-like", hellaswag_like), ("mmlu-0shot-like", functools.partial(mmlu_like, shots=0)),
                     ("mmlu-5shot-like", functools.partial(mmlu_like, shots=5)))
        for name, make in workloads:
            reqs = make(args.items)
            instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(reqs)]
            start = time.perf_counter()
            warm = lm.loglikelihood(reqs, args.batch_size)
            compile_s = time.perf_counter() - start
            unshared(reqs)  # compiles the whole-row shapes
            ours_s, unshared_s, theirs_s = [], [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                ours = lm.loglikelihood(reqs, args.batch_size)
                ours_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                theirs = hflm.loglikelihood(instances, disable_tqdm=True)
                theirs_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                unshared(reqs)
                unshared_s.append(time.perf_counter() - start)
            diff = float(np.max(np.abs(np.array([s for s, _ in ours]) - np.array([s for s, _ in theirs]))))
            same_acc = choices(ours) == choices(theirs) and [g for _, g in ours] == [g for _, g in theirs]
            rows.append((name, len(reqs), warm.n_rows, warm.n_stems, compile_s, len(reqs) / statistics.median(ours_s),
                         len(reqs) / statistics.median(unshared_s), len(reqs) / statistics.median(theirs_s), diff,
                         same_acc))

    command = "python benchmarks/eval_speed.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [f"`{command.strip()}` — GPT-2 124M shape, random weights, float32, CPU, batch {args.batch_size}, "
             f"median of {args.repeats} alternating runs",
             "", "| workload | requests | gptjax rows (stems) | gptjax first pass (compile) s | gptjax items/s | "
                 "gptjax, rows whole items/s | lm-eval HF items/s | speedup | max abs diff | same acc, is_greedy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, n, n_rows, n_stems, compile_s, ours_ips, unshared_ips, theirs_ips, diff, same_acc in rows:
        lines.append(f"| {name} | {n} | {n_rows} ({n_stems}) | {compile_s:.1f} | {ours_ips:.1f} | {unshared_ips:.1f} | "
                     f"{theirs_ips:.1f} | {ours_ips / theirs_ips:.2f}x | {diff:.1e} | {'yes' if same_acc else 'NO'} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
