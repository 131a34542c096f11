"""`gptjax import --format hf --src HF_DIR|ORG/NAME[@REVISION] --workdir DIR [--tokenizer-dir DIR]`: a transformers
model (a local directory, or a Hugging Face Hub id fetched through the Hub cache) as a new gptjax workdir at step 0
(gptjax.interop.hf); --tokenizer-dir pairs a weights-only directory with a tokenizer."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "import a model (--format hf) into a new workdir"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, choices=("hf",))
    p.add_argument("--src", required=True,
                   help="an HF model directory, or a Hub id ORG/NAME[@REVISION] (safetensors only; cached in "
                        "HF_HUB_CACHE; HF_HUB_OFFLINE=1 uses the cache alone)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--tokenizer-dir", default=None,
                   help="the tokenizer to pair with the model (instead of --src's own; needed to train a weights-only "
                        "checkpoint): HF tokenizer files, GPT-2 vocab.json + merges.txt, or a gptjax tokenizer dir")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from gptjax import hub
    from gptjax.errors import GptjaxError
    from gptjax.interop import hf

    if args.format != "hf":
        raise GptjaxError(f"unknown import format '{args.format}' (hf)")
    src, hub_source = args.src, None
    if hub.is_hub_id(args.src):
        snapshot = hub.snapshot(args.src, "--src")
        src, hub_source = snapshot.path, snapshot.pinned_id
    cfg, model = hf.import_hf(src, args.workdir, tokenizer_dir=args.tokenizer_dir, hub_source=hub_source)
    workdir = Path(args.workdir).absolute()
    tokenizer = "no" if model.tokenizer is None else model.tokenizer.kind
    advice = hf.next_steps(model.tokenizer, workdir)
    print(f"imported {hf.ARCHITECTURES[model.family]} from {hub_source or args.src} into {workdir} (step 0, "
          f"{tokenizer} tokenizer, vocab {cfg.model.vocab_size}, block_size {cfg.model.block_size}); {advice}")
    return 0
