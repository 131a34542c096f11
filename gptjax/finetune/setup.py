"""What a finetuning run adds to the trainer's setup: its tokenizer (the base model's), its trainable mask, and
the DPO reference's log-probs computed once. The loop (gptjax/train/loop.py) calls these; nothing here does I/O
except the reference cache in the workdir."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from gptjax import config as config_lib
from gptjax import fileio
from gptjax.config import Config
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError

REFERENCE_CACHE = "reference_logprobs.npz"


def finetune_tokenizer(cfg: Config, source) -> tokenizers.Tokenizer:
    """The base model's (`train.init_from`) tokenizer, which the records are tokenized with; the chat template adds
    its role tokens (gptjax.finetune.templates.CHAT_TOKENS) after the base's vocabulary."""
    from gptjax.finetune.templates import CHAT_TOKENS

    if source.tokenizer is None:
        raise GptjaxError(f"train.init_from={cfg.train.init_from} has no tokenizer (a weights-only import), and "
                          f"finetuning reads text records; import it again with --tokenizer-dir")
    if adds_tokens(cfg):
        return tokenizers.WithSpecialTokens(source.tokenizer, CHAT_TOKENS)
    return source.tokenizer


def run_trainable_mask(cfg: Config) -> Any | None:
    """The finetune's trainable mask (`finetune.freeze`), or None when every param trains."""
    import flax.linen as nn

    from gptjax.finetune.freeze import trainable_mask
    from gptjax.model.transformer import abstract_params

    if cfg.train.objective not in config_lib.FINETUNE_OBJECTIVES:
        return None
    return trainable_mask(cfg.finetune.freeze, cfg.model, nn.unbox(abstract_params(cfg.model, cfg.train.seed)),
                          train_embeddings=adds_tokens(cfg))


def adds_tokens(cfg: Config) -> bool:
    """True when the finetune adds special tokens to the base's vocabulary (the chat template's role tokens): their
    embeddings must learn, so the token embedding (and an untied output head) train under every freeze policy."""
    return cfg.finetune.template == "chat" and cfg.train.objective in ("sft", "dpo")


def _npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def attach_reference_logprobs(data, step, reference_params: Callable[[], Any], workdir: Path, batch_size: int) -> None:
    """DPO with finetune.reference=precomputed: the reference's summed log-probs of every chosen and rejected
    response of every split, attached to `data` (a FinetuneData). Computed once and cached in the workdir, keyed by
    the records, the template and the reference; `reference_params` is called only when they must be computed."""
    from gptjax.model.losses import pair_logprobs

    cache = workdir / REFERENCE_CACHE
    key = f"{fileio.sha256_file(data.path)}:{step.cfg.finetune.template}:{fileio.absolute(step.cfg.train.init_from)}"
    if cache.is_file():
        stored = np.load(io.BytesIO(cache.read_bytes()))  # a gs:// workdir's object too
        if str(stored["key"]) == key:
            for split in data.splits:
                data.attach(split, {"ref_chosen": stored[f"{split}_chosen"],
                                    "ref_rejected": stored[f"{split}_rejected"]})
            return
    score = jax.jit(lambda p, b: pair_logprobs(p, step.model, b))
    params = reference_params()
    arrays = {"key": np.asarray(key)}
    for split in tqdm(list(data.splits), desc="reference log-probs", unit="split", disable=jax.process_index() != 0):
        chosen, rejected = [], []
        for batch in data.eval_batches(split, batch_size):
            c, r = score(params, batch)
            chosen.append(np.asarray(c))
            rejected.append(np.asarray(r))
        n = data.splits[split].n
        arrays[f"{split}_chosen"] = np.concatenate(chosen)[:n].astype(np.float32)
        arrays[f"{split}_rejected"] = np.concatenate(rejected)[:n].astype(np.float32)
        data.attach(split, {"ref_chosen": arrays[f"{split}_chosen"], "ref_rejected": arrays[f"{split}_rejected"]})
    if jax.process_index() == 0:
        fileio.write_bytes_atomic(cache, _npz_bytes(arrays))
