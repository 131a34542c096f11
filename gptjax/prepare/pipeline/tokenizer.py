"""Phase 3: the run's tokenizer, reused from a saved one (or a Hugging Face tokenizer.json, which `tokenizers.load`
reads as hf), read from GPT-2 files or a tiktoken tokenizer.model (hf), or trained on the survivors (char: every
character seen; sentencepiece: a sample of the train documents)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gptjax.config import DataConfig
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.fileio import write_json_atomic
from gptjax.prepare import settings, stages
from gptjax.prepare.pipeline import chunk_files
from gptjax.prepare.pipeline.results import DedupResult, TokenizerInfo
from gptjax.prepare.pipeline.survivors import char_cut_texts, surviving_texts
from gptjax.prepare.report import StageStats


def _char_tokenizer(work: Path, n_chunks: int, char_cut: bool) -> tokenizers.CharTokenizer:
    chars = set()
    for chunk in range(n_chunks):
        chars.update(chunk_files.read_done(chunk_files.clean_paths(work / "clean", chunk)["done.json"])["chars"])
    if char_cut:
        chars.add("\n")
    return tokenizers.CharTokenizer("".join(sorted(chars)))


def _sample_texts(work: Path, starts: np.ndarray, keep: np.ndarray, dedup: DedupResult,
                  data: DataConfig) -> list[str]:
    """What sentencepiece trains on: about `sample_docs` train documents (by doc id), at most `sample_bytes`."""
    scratch = StageStats()
    prepare = data.prepare
    if dedup.char_cut:
        return [char_cut_texts(work, starts, keep, data, scratch)[0][: prepare.sample_bytes]]
    fraction = min(1.0, prepare.sample_docs / max(dedup.n_train, 1))
    return surviving_texts(work, starts, keep, data, scratch, byte_budget=prepare.sample_bytes,
                           only=lambda doc_id, val: not val and stages.unit_fraction(doc_id) < fraction)


def _save(tok: tokenizers.Tokenizer, tok_dir: Path) -> None:
    """Saves `tok` as `tok_dir`, which appears complete or not at all."""
    scratch_dir = tok_dir.with_name(f".{tok_dir.name}.tmp")
    shutil.rmtree(scratch_dir, ignore_errors=True)
    tokenizers.save(tok, scratch_dir)
    shutil.rmtree(tok_dir, ignore_errors=True)
    os.rename(scratch_dir, tok_dir)


def tokenizer_phase(work: Path, starts: np.ndarray, keep: np.ndarray, dedup: DedupResult, data: DataConfig,
                    show_progress: bool) -> TokenizerInfo:
    """Builds (or reuses) the tokenizer in `work/tokenizer`."""
    tok_dir = work / "tokenizer"
    info_path = work / "tokenizer.json"
    cached = chunk_files.read_done(info_path)
    if cached is not None and (tok_dir / tokenizers.SPEC_FILE).is_file():
        return TokenizerInfo.from_json(cached)
    started = time.perf_counter()
    prepare = data.prepare
    texts: list[str] = []
    if data.tokenizer_dir and (Path(data.tokenizer_dir) / tokenizers.SPEC_FILE).is_file():
        tok = tokenizers.load(data.tokenizer_dir)
        if tok.kind != data.tokenizer:
            raise GptjaxError(f"--tokenizer-dir {data.tokenizer_dir} holds a {tok.kind} tokenizer, not "
                              f"{data.tokenizer}; pass --tokenizer {tok.kind}")
    elif data.tokenizer == "gpt2_bpe":
        tok = tokenizers.Gpt2BpeAdapter.from_dir(data.tokenizer_dir)
    elif data.tokenizer == "hf":
        tok = tokenizers.HfTokenizer.from_dir(data.tokenizer_dir)
    elif data.tokenizer == "char":
        tok = _char_tokenizer(work, len(starts) - 1, dedup.char_cut)
    else:
        texts = _sample_texts(work, starts, keep, dedup, data)
        if show_progress:
            tqdm.write(f"training sentencepiece ({prepare.model_type}, vocab {settings.vocab_size(data)}) on "
                       f"{len(texts):,} documents, {sum(map(len, texts)) / 1e6:.1f} M characters")
        tok = tokenizers.train_tokenizer("sentencepiece", texts, settings.vocab_size(data), prepare.model_type,
                                         prepare.byte_fallback)
    _save(tok, tok_dir)
    sentencepiece = data.tokenizer == "sentencepiece"
    info = TokenizerInfo(
        kind=tok.kind, vocab_size=tok.vocab_size, eot_id=tok.eot_id, fingerprint=tokenizers.fingerprint(tok),
        sample_docs=len(texts), sample_bytes=sum(len(t.encode("utf-8", "surrogatepass")) for t in texts),
        seconds=round(time.perf_counter() - started, 3),
        model_type=prepare.model_type if sentencepiece else None,
        byte_fallback=prepare.byte_fallback if sentencepiece else None)
    write_json_atomic(info_path, info.to_json())
    return info
