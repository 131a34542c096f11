"""`gptjax prepare`: text files -> tokenizer + train/val token files + manifest, in one atomic directory.

The output directory appears only when complete (built beside it, then renamed). Experiment configs name their
data; `resolve_data` prepares it on first use into a cache keyed by the inputs and settings, and reuses it after.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gptjax.config import DataConfig
from gptjax.data import store
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError

FORMAT_VERSION = 1
BUNDLED = {
    "shakespeare_char": {"inputs": ("tinyshakespeare.txt",), "tokenizer": "char"},
    "shakespeare": {"inputs": ("tinyshakespeare.txt",), "tokenizer": "sentencepiece"},
}
BUNDLED_DIR = Path(__file__).parent / "bundled"


def expand_inputs(patterns: list[str] | tuple[str, ...]) -> list[Path]:
    """Files named directly, by glob, or as directories (their *.txt files, recursively), sorted, deduplicated."""
    if not patterns:
        raise GptjaxError("no input files given (pass --input FILE_OR_DIR_OR_GLOB ...)")
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.txt") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            if not matches:
                raise GptjaxError(f"input not found: {pattern} (give an existing file, directory or glob)")
            found.extend(matches)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def read_text_file(path: Path) -> str:
    """A whole UTF-8 text file as one document; empty or non-UTF-8 files are errors naming the file and byte."""
    data = path.read_bytes()
    if not data.strip():
        raise GptjaxError(f"input file is empty: {path} (remove it from --input)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GptjaxError(f"input file is not valid UTF-8: {path} at byte {e.start} "
                          f"(convert it, e.g. `iconv -f latin1 -t utf-8`)") from None


def doc_in_val(text: str, val_fraction: float) -> bool:
    """Deterministic split by document hash."""
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") / 2.0**64
    return bucket < val_fraction


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """By document hash; a corpus too small for that to give both splits is cut by characters (nanoGPT's 90/10)."""
    train = [d for d in docs if not doc_in_val(d, val_fraction)]
    val = [d for d in docs if doc_in_val(d, val_fraction)]
    if train and val:
        return train, val
    joined = "\n\n".join(docs)
    cut = int(len(joined) * (1.0 - val_fraction))
    return [joined[:cut]], [joined[cut:]]


def encode_documents(tok: tokenizers.Tokenizer, docs: list[str], desc: str) -> np.ndarray:
    """Token ids of the documents with `<|endoftext|>` between them."""
    pieces: list[np.ndarray] = []
    dtype = store.token_dtype(tok.vocab_size)
    eot = np.array([tok.eot_id], dtype)
    for i, doc in enumerate(tqdm(docs, desc=desc, unit="doc", leave=False, disable=len(docs) < 2)):
        if i:
            pieces.append(eot)
        pieces.append(np.asarray(tok.encode(doc), dtype=dtype))
    return np.concatenate(pieces) if pieces else np.zeros((0,), dtype)


def prepare(inputs: list[str] | tuple[str, ...], out_dir: str | Path, tokenizer: str = "char", vocab_size: int = 4096,
            val_fraction: float = 0.1, tokenizer_dir: str | None = None) -> dict:
    """Prepares `inputs` into `out_dir` (which must not hold data yet); returns the manifest."""
    out_dir = Path(out_dir)
    if (out_dir / store.MANIFEST).exists():
        raise GptjaxError(f"{out_dir} already holds prepared data; choose another --out (nothing was changed)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise GptjaxError(f"{out_dir} exists and is not empty; choose a new --out directory (nothing was changed)")
    started = time.time()
    paths = expand_inputs(inputs)
    docs = [read_text_file(p) for p in tqdm(paths, desc="read", unit="file", leave=False, disable=len(paths) < 2)]
    train_docs, val_docs = split_documents(docs, val_fraction)
    if tokenizer == "gpt2_bpe":
        if not tokenizer_dir:
            raise GptjaxError("--tokenizer gpt2_bpe needs --tokenizer-dir holding vocab.json and merges.txt")
        tok = tokenizers.Gpt2BpeAdapter.from_dir(tokenizer_dir)
    else:
        tok = tokenizers.train_tokenizer(tokenizer, train_docs, vocab_size)
    fp = tokenizers.fingerprint(tok)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        tokenizers.save(tok, staging / "tokenizer")
        splits = {}
        for split, split_docs in (("train", train_docs), ("val", val_docs)):
            tokens = encode_documents(tok, split_docs, f"tokenize {split}")
            store.write_tokens(staging / f"{split}.bin", tokens, fp)
            splits[split] = {
                "shards": [{"file": f"{split}.bin", "n_tokens": int(tokens.size)}],
                "n_tokens": int(tokens.size),
                "n_bytes": sum(len(d.encode()) for d in split_docs),
                "n_documents": len(split_docs),
            }
        manifest = {
            "format_version": FORMAT_VERSION,
            "tokenizer": {"kind": tok.kind, "fingerprint": fp, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id},
            "splits": splits,
            "inputs": [str(p) for p in paths],
            "seconds": round(time.time() - started, 3),
        }
        store.write_json_atomic(staging / store.MANIFEST, manifest)
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def cache_root(data_cfg: DataConfig) -> Path:
    return Path(data_cfg.cache_dir or os.environ.get("GPTJAX_CACHE") or Path.home() / ".cache" / "gptjax")


def resolve_data(data_cfg: DataConfig) -> Path:
    """The prepared data directory a config names, preparing it into the cache on first use."""
    if data_cfg.path:
        store.read_manifest(data_cfg.path)
        return Path(data_cfg.path)
    if data_cfg.dataset:
        if data_cfg.dataset not in BUNDLED:
            raise GptjaxError(f"unknown bundled dataset '{data_cfg.dataset}' (known: {', '.join(BUNDLED)}); "
                              f"or set data.dataset='' and data.path / data.inputs")
        bundled = BUNDLED[data_cfg.dataset]
        inputs = [str(BUNDLED_DIR / name) for name in bundled["inputs"]]
        kind = bundled["tokenizer"]
    elif data_cfg.inputs:
        inputs, kind = [str(p) for p in expand_inputs(data_cfg.inputs)], data_cfg.tokenizer
    else:
        raise GptjaxError("the config names no data: set data.dataset, data.path or data.inputs")
    key_src = {
        "v": FORMAT_VERSION, "tokenizer": kind, "vocab_size": data_cfg.vocab_size if kind == "sentencepiece" else 0,
        "val_fraction": data_cfg.val_fraction,
        "inputs": [(p, os.path.getsize(p), hashlib.sha256(Path(p).read_bytes()).hexdigest()) for p in inputs],
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    out_dir = cache_root(data_cfg) / "data" / f"{data_cfg.dataset or 'custom'}-{key}"
    if (out_dir / store.MANIFEST).exists():
        return out_dir
    try:
        prepare(inputs, out_dir, kind, data_cfg.vocab_size or 4096, data_cfg.val_fraction)
    except GptjaxError:
        if (out_dir / store.MANIFEST).exists():  # another process prepared it first
            return out_dir
        raise
    return out_dir
