"""`gptjax export` and `gptjax import`: moving models between gptjax and other formats.

  export --format safetensors   a self-contained gptjax export directory (gptjax.interop.native)
  export --format hf            a transformers GPT-2 / Llama directory (gptjax.interop.hf)
  import --format hf            a transformers directory -> a new gptjax workdir at step 0 (gptjax.interop.hf);
                                --tokenizer-dir pairs a weights-only directory with a tokenizer
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gptjax import fileio
from gptjax.errors import GptjaxError


def merged(lm):
    """`lm` as a plain model: LoRA adapters folded into their kernels (an export stands alone, without its base)."""
    import dataclasses

    from gptjax.api import LM
    from gptjax.model.lora import merge_lora

    if lm.config.lora_rank == 0:
        return lm
    params, model_cfg = merge_lora(lm.params, lm.config)
    cfg = dataclasses.replace(lm.cfg, model=model_cfg, finetune=dataclasses.replace(lm.cfg.finetune, freeze="none"))
    return LM(cfg, params, lm.tokenizer, lm.step, lm.meta)


def export_cli(args: argparse.Namespace) -> int:
    """`gptjax export --workdir DIR --format hf|safetensors --out OUT [--dtype float32|bfloat16]`."""
    import gptjax
    from gptjax.interop import hf, native
    from gptjax.model.transformer import count_params

    if args.format not in ("hf", "safetensors"):
        raise GptjaxError(f"unknown export format '{args.format}' (hf or safetensors)")
    out = Path(args.out)
    fileio.require_empty_destination(out, "--out directory")
    lm = merged(gptjax.load(args.workdir))
    if args.format == "hf" and lm.config.num_classes:
        raise GptjaxError(f"{args.workdir} is a classifier (model.num_classes={lm.config.num_classes}); a transformers "
                          f"causal-LM export has no place for its head: use --format safetensors")
    if args.format == "safetensors":
        native.export_native(lm, out, args.dtype)
        what, notes = "a gptjax export (load it with gptjax.load)", []
    else:
        notes = hf.export_hf(lm.cfg, lm.params, lm.tokenizer, out, args.dtype)
        what = f"a transformers {hf.ARCHITECTURES[hf.hf_family(lm.config)]}"
    print(f"exported {args.workdir} (step {lm.step}, {count_params(lm.params) / 1e6:.2f}M params) to {out} as "
          f"{what} in {args.dtype}" + "".join(f"; {note}" for note in notes))
    return 0


def import_cli(args: argparse.Namespace) -> int:
    """`gptjax import --format hf --src HF_DIR --workdir DIR [--tokenizer-dir TOK_DIR]`: a new workdir with a
    step-0 checkpoint."""
    from gptjax.interop import hf

    if args.format != "hf":
        raise GptjaxError(f"unknown import format '{args.format}' (hf)")
    cfg, model = hf.import_hf(args.src, args.workdir, tokenizer_dir=args.tokenizer_dir)
    workdir = Path(args.workdir).absolute()
    tokenizer = "no" if model.tokenizer is None else model.tokenizer.kind
    advice = hf.next_steps(model.tokenizer, workdir)
    print(f"imported {hf.ARCHITECTURES[model.family]} from {args.src} into {workdir} (step 0, {tokenizer} tokenizer, "
          f"vocab {cfg.model.vocab_size}, block_size {cfg.model.block_size}); {advice}")
    return 0
