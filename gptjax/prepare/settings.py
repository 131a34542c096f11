"""The pipeline's settings: a `DataConfig` (tokenizer, val fraction and its `prepare` section), checked in one
place before any work, and the part of them that decides the output (the resume and cache key).

Each field's range or options are declared on the field (`gptjax.config`); this module adds the checks that
relate fields or need the stages' own libraries (MinHash banding, the language list of py3langid)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from gptjax import config as config_lib
from gptjax.config import DataConfig
from gptjax.data import tiktoken_bpe
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.prepare.stages import langid_config, minhash_config

DEFAULT_VOCAB_SIZE = 4096
OUTPUT_INDEPENDENT = ("workers", "tfds")  # they change how the output is computed or exported, not its tokens


def vocab_size(data: DataConfig) -> int:
    """The sentencepiece vocabulary to train (data.vocab_size, or 4096 where it is 0)."""
    return data.vocab_size or DEFAULT_VOCAB_SIZE


def _check_tokenizer_dir(directory: Path, kind: str) -> None:
    """A tokenizer_dir must hold a saved gptjax tokenizer, for gpt2_bpe GPT-2's vocab.json + merges.txt, or for hf a
    Hugging Face tokenizer.json (which has the same name as gptjax's saved tokenizer spec) or, without one, a
    tiktoken tokenizer.model (Llama 3's original release) that parses."""
    if (directory / tokenizers.SPEC_FILE).is_file():
        return
    gpt2_files = (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
    if kind == "gpt2_bpe" and gpt2_files:
        return
    tiktoken_file = directory / tokenizers.TIKTOKEN_FILE
    if kind == "hf" and tiktoken_file.is_file():
        if tiktoken_bpe.read_ranks(tiktoken_file.read_bytes()) is None:
            raise GptjaxError(f"data.tokenizer_dir (--tokenizer-dir): {tiktoken_file} is not a tiktoken BPE file (one "
                              f"`BASE64_TOKEN RANK` line per token); point it at a directory holding the model's "
                              f"tokenizer.json, or Llama 3's original tiktoken {tokenizers.TIKTOKEN_FILE}")
        return
    expected = f"{tokenizers.SPEC_FILE}" + {"gpt2_bpe": " nor vocab.json + merges.txt",
                                            "hf": f" nor a tiktoken {tokenizers.TIKTOKEN_FILE}"}.get(kind, "")
    raise GptjaxError(f"data.tokenizer_dir (--tokenizer-dir) {directory} holds no tokenizer (no {expected}); point it "
                      f"at a prepared dataset's tokenizer/ directory" +
                      (" or at GPT-2's vocab.json + merges.txt" if kind == "gpt2_bpe" else "") +
                      (" or at a Hugging Face model's directory (its tokenizer.json, or Llama 3's original "
                       "tokenizer.model)" if kind == "hf" else ", or leave it out to train a new tokenizer"))


def check(data: DataConfig) -> None:
    """Raises a GptjaxError naming the first setting of `data` the pipeline cannot run with."""
    for leaf in config_lib.leaf_fields(data, "data."):
        if leaf.key in ("data.val_fraction", "data.cache_dir", "data.prefetch_threads", "data.workers"):
            continue  # training-time fields; a prepare may hold no val split at all (val_fraction 0)
        problem = config_lib.declared_violation(leaf, name_flag=True)
        if problem:
            raise GptjaxError(problem)
    if not 0.0 <= data.val_fraction < 1.0:
        raise GptjaxError(f"data.val_fraction={data.val_fraction} (--val-fraction) must lie in [0, 1)")
    if data.tokenizer == "gpt2_bpe" and not data.tokenizer_dir:
        raise GptjaxError("the gpt2_bpe tokenizer needs data.tokenizer_dir (--tokenizer-dir) holding vocab.json and "
                          "merges.txt")
    if data.tokenizer == "hf" and not data.tokenizer_dir:
        raise GptjaxError("the hf tokenizer needs data.tokenizer_dir (--tokenizer-dir): a directory holding a Hugging "
                          "Face tokenizer.json (and its tokenizer_config.json) or a tiktoken tokenizer.model")
    if data.tokenizer_dir:
        _check_tokenizer_dir(Path(data.tokenizer_dir), data.tokenizer)
    if data.prepare.dedup == "near":
        minhash_config(data.prepare)
    if data.prepare.languages:
        langid_config(data.prepare)


def settings_key(data: DataConfig) -> dict:
    """The settings that determine the prepared output (not the worker count or extra exports)."""
    prepare = {name: value for name, value in dataclasses.asdict(data.prepare).items()
               if name not in OUTPUT_INDEPENDENT}
    prepare["languages"] = list(data.prepare.languages)
    key = {"tokenizer": data.tokenizer, "vocab_size": vocab_size(data), "tokenizer_dir": data.tokenizer_dir,
           "val_fraction": data.val_fraction, "prepare": prepare}
    if data.tokenizer == "hf":  # the files, not only their directory: a changed tokenizer.json is other data
        key["tokenizer_files"] = tokenizers.source_digest(data.tokenizer_dir)
    return key
