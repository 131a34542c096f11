"""`gptjax generate --workdir DIR_OR_EXPORT --prompt TEXT ...`: sample text from a trained model.

Past the trained length: a model with learned or sinusoidal positions keeps going by predicting each token from the
last block_size tokens (a sliding window, nanoGPT's cropping); a model with rope, alibi or no positions would
extrapolate past its trained block_size instead, which is refused unless --allow-extrapolation (then it warns).
"""
from __future__ import annotations

import argparse
import codecs
import re
import sys
import warnings
from typing import Callable

from gptjax.errors import GptjaxError, warn

HELP = "sample text from a trained model"

# Python's string escapes, each pure ASCII; anything else (non-ASCII text, unknown escapes) is left as typed
ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[0-7]{1,3}|[\\'\"abfnrtv])")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("--workdir", required=True, help="training workdir or export dir")
    p.add_argument("--prompt", action="append", help="repeat for a batch of prompts")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per prompt (>= 1)")
    p.add_argument("--temperature", type=float, default=0.8, help=">= 0; 0 = greedy")
    p.add_argument("--top-k", type=int, default=200, help=">= 0; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="in (0, 1]; 1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--escapes", action="store_true",
                   help="interpret backslash escapes (\\n, \\t, \\\\, \\xNN, \\uNNNN) in prompts; other text is kept")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="weights and compute dtype (default: as saved); bfloat16 halves the bytes read per token, "
                        "greedy tokens may then differ from float32's")
    p.add_argument("--compilation-cache", default=None, metavar="DIR|off",
                   help="persistent XLA compilation cache (default: the run's train.compilation_cache, as training)")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="let a rope/alibi/no-position model generate past its trained block_size (with a warning)")


def interpret_escapes(text: str) -> str:
    """`text` with its backslash escapes replaced by the characters they name; everything else unchanged."""
    try:
        return ESCAPE.sub(lambda m: codecs.decode(m.group(), "unicode_escape"), text)
    except UnicodeDecodeError as e:
        raise GptjaxError(f"--prompt {text!r} has an escape that names no character ({e.reason}); "
                          "fix it or drop --escapes") from None


def _warn_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    warn(str(message))


def _stream_after(prompt: str) -> Callable[[list[str]], None]:
    """Writes the first row's text as it is decoded, preceded by `prompt`: written with the first chunk, so a
    refused request prints nothing to stdout."""
    unwritten = [prompt]

    def write(texts: list[str]) -> None:
        sys.stdout.write((unwritten.pop() if unwritten else "") + texts[0])
        sys.stdout.flush()

    return write


def _use_compilation_cache(cfg, setting: str | None) -> None:
    """The persistent compilation cache training uses (or `setting`): a second start skips compiling the decoder."""
    import dataclasses

    from gptjax.train.run import setup_compilation_cache

    if setting is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compilation_cache=setting))
    setup_compilation_cache(cfg)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import gptjax

    lm = gptjax.load(args.workdir)
    if args.dtype is not None:
        lm = lm.with_dtype(args.dtype)
    _use_compilation_cache(lm.cfg, args.compilation_cache)
    prompts = args.prompt or [""]
    prompts = [interpret_escapes(p) if args.escapes else p for p in prompts]
    prompts = prompts * args.num_samples if len(prompts) == 1 else prompts
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, seed=args.seed, allow_extrapolation=args.allow_extrapolation)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _warn_one_line
        if len(prompts) == 1:
            lm.generate(prompts, chunk=16, stream=_stream_after(prompts[0]), **kwargs)
            sys.stdout.write("\n")
        else:
            for prompt, text in zip(prompts, lm.generate(prompts, **kwargs)):
                print(f"{prompt}{text}\n{'-' * 40}")
    return 0
