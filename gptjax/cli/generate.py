"""`gptjax generate --workdir DIR_OR_EXPORT --prompt TEXT ...`: sample text from a trained model."""
from __future__ import annotations

import argparse
import sys

HELP = "sample text from a trained model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="training workdir or export dir")
    p.add_argument("--prompt", action="append", help="repeat for a batch of prompts")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--escapes", action="store_true", help="interpret \\n etc. in prompts")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import gptjax

    lm = gptjax.load(args.workdir)
    prompts = args.prompt or [""]
    prompts = [p.encode().decode("unicode_escape") if args.escapes else p for p in prompts]
    prompts = prompts * args.num_samples if len(prompts) == 1 else prompts
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, seed=args.seed)
    if len(prompts) == 1:
        sys.stdout.write(prompts[0])
        lm.generate(prompts, chunk=16, stream=lambda texts: (sys.stdout.write(texts[0]), sys.stdout.flush()), **kwargs)
        sys.stdout.write("\n")
    else:
        for prompt, text in zip(prompts, lm.generate(prompts, **kwargs)):
            print(f"{prompt}{text}\n{'-' * 40}")
    return 0
