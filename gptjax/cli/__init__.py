"""`gptjax <verb>`: one thin module per verb in this package parses its arguments and calls a library function.

Every user error ends as one line on stderr (`gptjax: error: ...`) and exit code 2 (130 when interrupted).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from gptjax.cli.common import split_config_overrides
from gptjax.errors import GptjaxError, storage_error

VERBS = {
    "prepare": "prepare",
    "train": "train",
    "eval": "eval",
    "generate": "generate",
    "quickstart": "quickstart",
    "export": "export",
    "import": "import_",
    "compile-check": "compile_check",
    "scaling": "scaling",
    "ablate": "ablate",
    "serve": "serve",
}


def _verb_module(verb: str):
    return importlib.import_module(f"gptjax.cli.{VERBS[verb]}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI's parser, or (faster: other verbs' modules stay unimported) just the verb `only`."""
    parser = argparse.ArgumentParser(prog="gptjax", description="gptjax: build GPT-style language models in JAX/Flax")
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ([only] if only in VERBS else VERBS):
        module = _verb_module(verb)
        p = sub.add_parser(verb, help=module.HELP, description=module.__doc__.splitlines()[0])
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        rest, overrides = split_config_overrides(argv)
        args = build_parser(rest[0] if rest else None).parse_args(rest)
        module = _verb_module(args.verb)
        if overrides and not getattr(module, "TAKES_OVERRIDES", False):
            raise GptjaxError(f"--config.* overrides apply to `gptjax train`, not `{args.verb}`")
        return module.run(args, overrides)
    except GptjaxError as e:
        from gptjax.errors import RunInterrupted

        print(f"gptjax: error: {e}", file=sys.stderr)
        return 130 if isinstance(e, RunInterrupted) else 2
    except OSError as e:
        refused = storage_error(e)
        if refused is None:
            raise
        print(f"gptjax: error: {refused}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptjax: interrupted", file=sys.stderr)
        return 130
