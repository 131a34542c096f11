"""`gptjax <verb>`: prepare, train, eval, generate, quickstart, export, import.

Every user error ends as one line on stderr (`gptjax: error: ...`) and a non-zero exit code.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from gptjax.errors import GptjaxError

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICKSTART_CONFIG = REPO_ROOT / "experiments" / "shakespeare_char_cpu.py"


def _split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.a.b=v` / `--config.a.b v` overrides from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise GptjaxError(f"override {arg} needs a value: {arg}=VALUE")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _load_config(path: str, overrides: list[str]):
    """The validated config; on CPU also splits the host into per-core devices (before JAX starts)."""
    from gptjax import config as config_lib
    from gptjax.parallel.mesh import configure_cpu_devices

    cd = config_lib.load_experiment(path)
    config_lib.apply_overrides(cd, overrides)
    cfg = config_lib.to_config(cd)
    configure_cpu_devices(cfg.train.cpu_devices, cfg.train.batch_size // cfg.train.grad_accum)
    return cfg


def cmd_train(args, overrides: list[str]) -> int:
    from gptjax.train.loop import train

    cfg = _load_config(args.config, overrides)
    summary = train(cfg, args.workdir)
    print(json.dumps({k: summary[k] for k in ("step", "loss", "val_loss", "val_ppl", "val_bpb") if k in summary}))
    return 0


def evaluate_split(lm, data_dir: Path, split: str, batch_size: int, max_tokens: int) -> dict:
    """Exact loss over a split in consecutive non-overlapping windows of block_size (+1 target)."""
    import numpy as np
    from tqdm.auto import tqdm

    from gptjax.data import store

    block = lm.config.block_size
    tokens = np.concatenate([np.asarray(store.read_tokens(p)) for p in store.split_shards(data_dir, split)])
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    n_windows = (len(tokens) - 1) // block
    if n_windows == 0:
        raise GptjaxError(f"the {split} split has {len(tokens)} tokens, fewer than block_size + 1 = {block + 1}")
    nll, count = 0.0, 0
    for start in tqdm(range(0, n_windows, batch_size), desc=f"eval {split}", unit="batch"):
        rows = [tokens[i * block: i * block + block + 1].astype(np.int32) for i in range(start, min(start + batch_size, n_windows))]
        for lp in lm.token_logprobs([r.tolist() for r in rows]):
            nll -= float(lp.sum())
            count += len(lp)
    manifest = store.read_manifest(data_dir)
    split_info = manifest["splits"][split]
    loss = nll / count
    bytes_per_token = split_info["n_bytes"] / max(split_info["n_tokens"], 1)
    return {"split": split, "tokens": count, "loss": loss, "ppl": math.exp(min(loss, 50)),
            "bpb": loss / math.log(2) / bytes_per_token}


def cmd_eval(args) -> int:
    import gptjax

    lm = gptjax.load(args.workdir)
    data_dir = Path(args.data or lm.meta.get("data_dir", ""))
    if not args.data and not data_dir.name:
        raise GptjaxError("this model does not record its data dir; pass --data DIR")
    print(json.dumps(evaluate_split(lm, data_dir, args.split, args.batch_size, args.max_tokens)))
    return 0


def cmd_generate(args) -> int:
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


def cmd_quickstart(args) -> int:
    import gptjax
    from gptjax.train.loop import train

    if not QUICKSTART_CONFIG.is_file():
        raise GptjaxError(f"quickstart needs the experiments/ folder of a gptjax checkout ({QUICKSTART_CONFIG} missing); "
                          f"install with `pip install -e .` from the repository")
    overrides = [f"train.steps={args.steps}"] if args.steps else []
    cfg = _load_config(str(QUICKSTART_CONFIG), overrides)
    print(f"quickstart: training {cfg.name} on the bundled Shakespeare (char-level) in {args.workdir}")
    train(cfg, args.workdir)
    lm = gptjax.load(args.workdir)
    full = evaluate_split(lm, Path(lm.meta["data_dir"]), "val", 64, 0)
    print(f"\nval loss {full['loss']:.4f} over the whole val split ({full['tokens']:,} tokens) | perplexity "
          f"{full['ppl']:.2f} | bits/byte {full['bpb']:.3f}")
    print("\nsample (temperature 0.8, top-k 200):\n" + "-" * 40)
    sys.stdout.write("\n")
    lm.generate(["\n"], max_new_tokens=args.sample_tokens, temperature=0.8, top_k=200, seed=args.seed, chunk=32,
                stream=lambda texts: (sys.stdout.write(texts[0]), sys.stdout.flush()))
    print("\n" + "-" * 40)
    return 0


def cmd_export(args) -> int:
    from gptjax.interop import export_cli

    return export_cli(args)


def cmd_import(args) -> int:
    from gptjax.interop import import_cli

    return import_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)

    from gptjax.data.pipeline import add_prepare_arguments

    p = sub.add_parser("prepare", help="raw text -> filtered, deduplicated token shards + tokenizer + report")
    add_prepare_arguments(p)

    p = sub.add_parser("train", help="train or resume: --config experiments/X.py --workdir DIR [--config.a.b=v ...]")
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)

    p = sub.add_parser("eval", help="loss / perplexity / bits-per-byte of a trained model on a data split")
    p.add_argument("--workdir", required=True, help="training workdir or export dir")
    p.add_argument("--data", help="prepared data dir (default: the one the model was trained on)")
    p.add_argument("--split", default="val")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=0, help="evaluate only the first N tokens (0 = all)")

    p = sub.add_parser("generate", help="sample text from a trained model")
    p.add_argument("--workdir", required=True, help="training workdir or export dir")
    p.add_argument("--prompt", action="append", help="repeat for a batch of prompts")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--escapes", action="store_true", help="interpret \\n etc. in prompts")

    p = sub.add_parser("quickstart", help="train a small Shakespeare model on CPU, evaluate it and sample from it")
    p.add_argument("--workdir", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=0, help="0 = the experiment's 2000")
    p.add_argument("--sample-tokens", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("export", help="export a trained model (--format hf | safetensors)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--format", required=True, choices=("hf", "safetensors"))
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))

    p = sub.add_parser("import", help="import a model (--format hf) into a new workdir")
    p.add_argument("--format", required=True, choices=("hf",))
    p.add_argument("--src", required=True)
    p.add_argument("--workdir", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        rest, overrides = _split_config_overrides(argv)
        args = build_parser().parse_args(rest)
        if overrides and args.verb != "train":
            raise GptjaxError(f"--config.* overrides apply to `gptjax train`, not `{args.verb}`")
        if args.verb == "train":
            return cmd_train(args, overrides)
        from gptjax.data.pipeline import run_prepare

        handler = {"prepare": run_prepare, "eval": cmd_eval, "generate": cmd_generate, "quickstart": cmd_quickstart,
                   "export": cmd_export, "import": cmd_import}[args.verb]
        return handler(args)
    except GptjaxError as e:
        from gptjax.train.loop import RunInterrupted

        print(f"gptjax: error: {e}", file=sys.stderr)
        return 130 if isinstance(e, RunInterrupted) else 2
    except KeyboardInterrupt:
        print("gptjax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
