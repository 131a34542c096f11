"""`gptjax export --workdir DIR --format hf|safetensors --out OUT`: a trained model in another format.

  --format safetensors   a self-contained gptjax export directory (gptjax.export)
  --format hf            a transformers GPT-2 / Llama directory (gptjax.interop.hf)
LoRA adapters are folded into their kernels first, so an export stands alone without its base model. --ema exports
the moving average of the weights (train.ema_decay) instead of the weights.
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a trained model (--format hf | safetensors)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True)
    p.add_argument("--format", required=True, choices=("hf", "safetensors"))
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--ema", action="store_true",
                   help="export the moving average of the weights (a run trained with train.ema_decay > 0)")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import gptjax
    from gptjax import export, fileio
    from gptjax.errors import GptjaxError
    from gptjax.interop import hf
    from gptjax.model.transformer import count_params

    if args.format not in ("hf", "safetensors"):
        raise GptjaxError(f"unknown export format '{args.format}' (hf or safetensors)")
    out = Path(args.out)
    fileio.require_empty_destination(out, "--out directory")
    fileio.check_destination(out, "--out", directory=True)
    lm = gptjax.load(args.workdir, ema=args.ema).with_lora_merged()
    if args.format == "hf" and lm.config.num_classes:
        raise GptjaxError(f"{args.workdir} is a classifier (model.num_classes={lm.config.num_classes}); a transformers "
                          f"causal-LM export has no place for its head: use --format safetensors")
    if args.format == "safetensors":
        export.export_native(lm, out, args.dtype)
        what, notes = "a gptjax export (load it with gptjax.load)", []
    else:
        notes = hf.export_hf(lm.cfg, lm.params, lm.tokenizer, out, args.dtype)
        what = f"a transformers {hf.ARCHITECTURES[hf.hf_family(lm.config)]}"
    weights = "the moving average of the weights of " if args.ema else ""
    print(f"exported {weights}{args.workdir} (step {lm.step}, {count_params(lm.params) / 1e6:.2f}M params) to {out} as "
          f"{what} in {args.dtype}" + "".join(f"; {note}" for note in notes))
    return 0
