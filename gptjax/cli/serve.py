"""`gptjax serve --workdir RUN_OR_EXPORT [--host --port]`: an OpenAI-compatible HTTP server over the model.

Endpoints: GET /v1/models, POST /v1/completions (prompt as text or token ids, max_tokens, temperature, top_p, stop,
seed, logprobs, echo: echo + logprobs scores the prompt, as lm-eval's local-completions does), POST
/v1/chat/completions (the model's chat template; stream=true sends server-sent events), and the tokenizer routes
lm-eval's remote tokenizer reads. Requests share a continuous batch of --max-batch slots of --max-context tokens
each; up to --max-queue more wait (beyond that: HTTP 429). Ctrl-C / SIGTERM lets in-flight requests finish (up to
--shutdown-timeout seconds, then cancels them). Details: docs/serve.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gptjax.errors import GptjaxError

HELP = "serve a model over an OpenAI-compatible HTTP API"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("--workdir", required=True, help="training workdir or export dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the workdir's name)")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together (KV-cache slots, >= 1)")
    p.add_argument("--max-context", type=int, default=None,
                   help="tokens per request, prompt + max_tokens (default and upper bound: the model's block_size)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before HTTP 429 (>= 0)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish at shutdown before they are cancelled")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="weights and compute dtype (default: as saved)")
    p.add_argument("--no-warm-up", action="store_true", help="compile on the first requests instead of at start")


def check_arguments(args: argparse.Namespace, block_size: int) -> None:
    """Refuses settings outside their range, naming the flag."""
    if args.max_batch < 1:
        raise GptjaxError(f"--max-batch {args.max_batch} must be >= 1")
    if args.max_queue < 0:
        raise GptjaxError(f"--max-queue {args.max_queue} must be >= 0")
    if args.max_context is not None and not 2 <= args.max_context <= block_size:
        raise GptjaxError(f"--max-context {args.max_context} must be in [2, {block_size}] (the model's block_size)")
    if not 0 < args.port < 65536:
        raise GptjaxError(f"--port {args.port} must be in [1, 65535]")
    if not args.shutdown_timeout >= 0:
        raise GptjaxError(f"--shutdown-timeout {args.shutdown_timeout} must be >= 0")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    try:
        import uvicorn
    except ImportError:
        raise GptjaxError("gptjax serve needs fastapi and uvicorn: pip install 'gptjax[serve]'") from None
    import gptjax
    from gptjax.serve.app import ServeSettings, create_app
    from gptjax.train.run import setup_compilation_cache

    lm = gptjax.load(args.workdir, dtype=args.dtype)
    check_arguments(args, lm.config.block_size)
    setup_compilation_cache(lm.cfg)
    name = args.model_name or Path(str(args.workdir).rstrip("/")).name
    settings = ServeSettings(name, args.max_batch, args.max_context, args.max_queue, args.shutdown_timeout,
                             warm_up=not args.no_warm_up)
    app = create_app(lm, settings)
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=args.shutdown_timeout,
                log_level="info")
    return 0
