"""`gptjax prepare` as a function, bundled datasets, `resolve_data`: the prepared directory a config names, and
`open_data`: that directory with its manifest and tokenizer, checked to agree.

`prepare` runs the staged pipeline (gptjax.prepare.pipeline) with every filter off, so simple text is tokenized as it
is; `gptjax prepare` on the command line turns the filters on. The output directory appears only when complete.
Experiment configs name their data (`data.dataset` or `data.inputs`, cleaned as `data.prepare` says: raw by
default); `resolve_data` prepares it on first use into a cache keyed by the inputs and settings, and reuses it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from gptjax.config import Config, DataConfig, PrepareConfig
from gptjax.data import store
from gptjax.data import tokenizer as tokenizers
from gptjax.data.sources import cache_root, local_data_dir, mixture_entries
from gptjax.errors import GptjaxError
from gptjax.fileio import sha256_file
from gptjax.prepare import readers, settings
from gptjax.prepare.pipeline import FORMAT_VERSION, run_pipeline
from gptjax.prepare.stages import doc_in_val

BUNDLED = {
    "shakespeare_char": {"inputs": ("tinyshakespeare.txt",), "tokenizer": "char"},
    "shakespeare": {"inputs": ("tinyshakespeare.txt",), "tokenizer": "sentencepiece"},
    "english": {"inputs": ("english",), "tokenizer": "sentencepiece"},  # State of the Union + inaugural addresses
}
BUNDLED_DIR = Path(__file__).parent.parent / "data" / "bundled"
__all__ = ["BUNDLED", "BUNDLED_DIR", "FORMAT_VERSION", "doc_in_val", "expand_inputs",
           "open_data", "prepare", "resolve_data"]


def expand_inputs(patterns: list[str] | tuple[str, ...]) -> list[Path]:
    """Files named directly, by glob, or as directories (their readable files, recursively), sorted, deduplicated."""
    if not patterns:
        raise GptjaxError("no input files given (pass --input FILE_OR_DIR_OR_GLOB ...)")
    return list(dict.fromkeys(p.resolve() for p in readers.resolve_inputs(list(patterns))))


def prepare(inputs: list[str] | tuple[str, ...], out_dir: str | Path, tokenizer: str = "char", vocab_size: int = 4096,
            val_fraction: float = 0.1, tokenizer_dir: str | None = None) -> dict:
    """Prepares `inputs` into `out_dir` (which must not hold data yet) with every filter off; returns the manifest."""
    data = DataConfig(dataset="", tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
                      tokenizer_dir=tokenizer_dir or "")
    return run_pipeline(list(inputs), out_dir, data)


def resolve_data(data_cfg: DataConfig) -> Path:
    """The prepared data directory a config names, preparing it into the cache on first use.

    With `data.mixture`, the first entry's directory (its tokenizer and val split serve the run; the loader draws
    train rows from all entries)."""
    if data_cfg.mixture:
        if data_cfg.path:
            raise GptjaxError("set either data.path or data.mixture, not both")
        return mixture_entries(data_cfg)[0][0]
    if data_cfg.path:
        local = local_data_dir(data_cfg.path, data_cfg)
        store.read_manifest(local)
        return local
    if data_cfg.dataset:
        if data_cfg.dataset not in BUNDLED:
            raise GptjaxError(f"unknown bundled dataset '{data_cfg.dataset}' (known: {', '.join(BUNDLED)}); "
                              f"or set data.dataset='' and data.path / data.inputs")
        bundled = BUNDLED[data_cfg.dataset]
        inputs = [str(p) for p in expand_inputs([str(BUNDLED_DIR / name) for name in bundled["inputs"]])]
        kind = bundled["tokenizer"]
    elif data_cfg.inputs:
        settings.check(data_cfg)  # before hashing the inputs
        inputs, kind = [str(p) for p in expand_inputs(data_cfg.inputs)], data_cfg.tokenizer
    else:
        raise GptjaxError("the config names no data: set data.dataset, data.path, data.inputs or data.mixture")
    key_src = {
        "v": FORMAT_VERSION, "tokenizer": kind, "vocab_size": data_cfg.vocab_size if kind == "sentencepiece" else 0,
        "tokenizer_dir": str(Path(data_cfg.tokenizer_dir).resolve()) if data_cfg.tokenizer_dir else "",
        "val_fraction": data_cfg.val_fraction,
        "inputs": [(p, os.path.getsize(p), sha256_file(p)) for p in inputs],
    }
    if kind == "hf":
        key_src["tokenizer_files"] = tokenizers.source_digest(data_cfg.tokenizer_dir)
    if _changed_prepare_settings(data_cfg.prepare):
        key_src["prepare"] = _changed_prepare_settings(data_cfg.prepare)
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    out_dir = cache_root(data_cfg) / "data" / f"{data_cfg.dataset or 'custom'}-{key}"
    if (out_dir / store.MANIFEST).exists():
        return out_dir
    try:
        run_pipeline(inputs, out_dir, dataclasses.replace(data_cfg, tokenizer=kind))
    except GptjaxError:
        if (out_dir / store.MANIFEST).exists():  # another process prepared it first
            return out_dir
        raise
    return out_dir


NEAR_DEDUP_SETTINGS = ("jaccard", "num_perm", "bands", "ngram")


def _changed_prepare_settings(prepare: PrepareConfig) -> dict:
    """The `data.prepare` settings that differ from the raw defaults and change the output: only these enter the
    cache key, so a config without prepare settings keeps the key (and cache) it always had."""
    default = PrepareConfig()
    changed = {field.name: getattr(prepare, field.name) for field in dataclasses.fields(prepare)
               if field.name not in settings.OUTPUT_INDEPENDENT
               and getattr(prepare, field.name) != getattr(default, field.name)}
    if prepare.dedup == "near":  # near dedup's defaults have changed before: its settings always enter the key
        changed.update({name: getattr(prepare, name) for name in NEAR_DEDUP_SETTINGS})
    return changed


def open_data(cfg: Config) -> tuple[Path, dict, tokenizers.Tokenizer]:
    """(prepared data dir, its manifest, its tokenizer), checked to agree with each other."""
    data_dir = resolve_data(cfg.data)
    manifest = store.read_manifest(data_dir)
    tok = tokenizers.load(data_dir / "tokenizer")
    if manifest["tokenizer"]["fingerprint"] != tokenizers.fingerprint(tok):
        raise GptjaxError(f"{data_dir}: tokenizer/ does not match the tokenizer its {store.MANIFEST} was prepared "
                          f"with (fingerprints differ); re-run `gptjax prepare` for this directory")
    return data_dir, manifest, tok
