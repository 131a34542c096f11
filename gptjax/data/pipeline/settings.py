"""The pipeline's settings: a `DataConfig` (tokenizer, val fraction and its `prepare` section), checked in one
place, and the part of them that decides the output (the resume and cache key)."""
from __future__ import annotations

import dataclasses

from gptjax.config import DataConfig
from gptjax.data import tokenizer as tokenizers
from gptjax.data.stages import BOILERPLATE_MODES, DEDUP_MODES, TXT_MODES, langid_config, minhash_config
from gptjax.errors import GptjaxError

DEFAULT_VOCAB_SIZE = 4096
_POSITIVE = ("chunk_bytes", "shard_tokens", "max_doc_bytes", "sample_docs", "sample_bytes", "num_perm", "bands",
             "ngram", "workers")
OUTPUT_INDEPENDENT = ("workers", "tfds")  # they change how the output is computed or exported, not its tokens


def vocab_size(data: DataConfig) -> int:
    """The sentencepiece vocabulary to train (data.vocab_size, or 4096 where it is 0)."""
    return data.vocab_size or DEFAULT_VOCAB_SIZE


def _choice(value: str, choices: tuple[str, ...], key: str, flag: str) -> None:
    if value not in choices:
        raise GptjaxError(f"{key}={value!r} ({flag}) is not one of {', '.join(choices)}")


def check(data: DataConfig) -> None:
    """Raises a GptjaxError naming the first setting of `data` the pipeline cannot run with."""
    prepare = data.prepare
    _choice(data.tokenizer, tokenizers.KINDS, "data.tokenizer", "--tokenizer")
    if data.tokenizer == "gpt2_bpe" and not data.tokenizer_dir:
        raise GptjaxError("the gpt2_bpe tokenizer needs data.tokenizer_dir (--tokenizer-dir) holding vocab.json and "
                          "merges.txt")
    _choice(prepare.model_type, tokenizers.SENTENCEPIECE_MODEL_TYPES, "data.prepare.model_type", "--model-type")
    _choice(prepare.dedup, DEDUP_MODES, "data.prepare.dedup", "--dedup")
    _choice(prepare.boilerplate, BOILERPLATE_MODES, "data.prepare.boilerplate", "--boilerplate")
    _choice(prepare.txt_mode, TXT_MODES, "data.prepare.txt_mode", "--txt-mode")
    if not 0.0 <= data.val_fraction < 1.0:
        raise GptjaxError(f"data.val_fraction={data.val_fraction} (--val-fraction) must lie in [0, 1)")
    if data.tokenizer == "sentencepiece" and vocab_size(data) < 1:
        raise GptjaxError(f"data.vocab_size={data.vocab_size} (--vocab-size) must be >= 1")
    for name in _POSITIVE:
        if getattr(prepare, name) < 1:
            raise GptjaxError(f"data.prepare.{name} must be >= 1, got {getattr(prepare, name)}")
    if prepare.dedup == "near":
        minhash_config(prepare)
    if prepare.languages:
        langid_config(prepare)


def settings_key(data: DataConfig) -> dict:
    """The settings that determine the prepared output (not the worker count or extra exports)."""
    prepare = {name: value for name, value in dataclasses.asdict(data.prepare).items()
               if name not in OUTPUT_INDEPENDENT}
    prepare["languages"] = list(data.prepare.languages)
    return {"tokenizer": data.tokenizer, "vocab_size": vocab_size(data), "tokenizer_dir": data.tokenizer_dir,
            "val_fraction": data.val_fraction, "prepare": prepare}
