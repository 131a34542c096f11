"""`gptjax.load(path) -> LM`: the one door to a trained model for evaluation, generation, finetuning and export."""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import config as config_lib
from gptjax.config import Config
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.generate import SamplingParams, generate_ids
from gptjax.model.transformer import Transformer
from gptjax.model.losses import token_nll

EXPORT_MARKER = "gptjax_export.json"


class LM:
    """A language model: config, params, tokenizer, and pure functions over them."""

    def __init__(self, cfg: Config, params, tokenizer: tokenizers.Tokenizer, step: int | None = None, meta: dict | None = None):
        self.cfg = cfg
        self.config = cfg.model
        self.params = params
        self.tokenizer = tokenizer
        self.step = step
        self.meta = meta or {}
        self.model = Transformer(cfg.model)

    @functools.cached_property
    def _forward(self) -> Callable:
        return jax.jit(lambda params, tokens: self.model.apply({"params": params}, tokens))

    def _padded_batch(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, list[int]]:
        lengths = [len(t) for t in token_ids]
        if not lengths or min(lengths) == 0:
            raise GptjaxError("every sequence needs at least one token")
        longest = max(lengths)
        if longest > self.config.position_limit:
            raise GptjaxError(f"sequence of {longest} tokens exceeds the model's position limit {self.config.position_limit}")
        width = 64 * math.ceil(longest / 64)
        if self.config.position in ("learned", "sinusoidal"):
            width = min(width, self.config.position_limit)
        batch = np.zeros((len(token_ids), width), np.int32)
        for row, ids in enumerate(token_ids):
            batch[row, : len(ids)] = ids
        return batch, lengths

    def logits(self, token_ids) -> np.ndarray:
        """float32 logits [B, T, vocab_size] for a batch of equal-length token id sequences."""
        token_ids = np.asarray(token_ids, np.int32)
        if token_ids.ndim == 1:
            token_ids = token_ids[None]
        batch, _ = self._padded_batch(token_ids.tolist())
        out = np.asarray(self._forward(self.params, batch))
        return out[:, : token_ids.shape[1], : self.config.vocab_size]

    def token_logprobs(self, token_ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """log p(x_t | x_<t) for t = 1..len-1 of each sequence (right-padding never affects real tokens)."""
        if any(len(t) < 2 for t in token_ids):
            raise GptjaxError("scoring needs sequences of at least 2 tokens")
        inputs, lengths = self._padded_batch([t[:-1] for t in token_ids])
        targets = np.zeros_like(inputs)
        for row, ids in enumerate(token_ids):
            targets[row, : len(ids) - 1] = ids[1:]
        logits = self._forward(self.params, inputs)
        nll = np.asarray(token_nll(logits, jnp.asarray(targets))[0])
        return [-nll[row, :n] for row, n in enumerate(lengths)]

    def score(self, texts: Sequence[str], contexts: Sequence[str] | None = None) -> np.ndarray:
        """Summed log-probs of each text; given contexts, of each text as a continuation of its context.
        Scoring starts after an <|endoftext|> token, as a document does in training."""
        eot = self.tokenizer.eot_id
        sequences, starts = [], []
        for i, text in enumerate(texts):
            prefix = [eot] + (self.tokenizer.encode(contexts[i]) if contexts is not None else [])
            sequences.append(prefix + self.tokenizer.encode(text))
            starts.append(len(prefix) - 1)
        logprobs = self.token_logprobs(sequences)
        return np.array([float(lp[start:].sum()) for lp, start in zip(logprobs, starts)])

    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 200, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, chunk: int = 0,
                 stream: Callable[[list[str]], None] | None = None) -> list[str]:
        """Continuations of each prompt; `stream` receives each chunk's new text per prompt as it is decoded."""
        if isinstance(prompts, str):
            prompts = [prompts]
        eot = self.tokenizer.eot_id
        prompt_ids = [self.tokenizer.encode(p) or [eot] for p in prompts]
        on_chunk = None
        if stream is not None:
            on_chunk = lambda ids: stream([self.tokenizer.decode(t) for t in ids])
        ids = generate_ids(self.model, self.params, prompt_ids, max_new_tokens, eot,
                           SamplingParams(temperature, top_k, top_p), seed, chunk, on_chunk)
        return [self.tokenizer.decode(t) for t in ids]


def load(path: str | Path, step: int | None = None) -> LM:
    """An LM from a training workdir (its latest checkpoint, or `step`) or from a `gptjax export` directory."""
    path = Path(path)
    if (path / EXPORT_MARKER).is_file():
        from gptjax.interop.native import load_export

        return load_export(path)
    if not (path / "checkpoints").is_dir():
        raise GptjaxError(f"{path} is neither a training workdir (no checkpoints/) nor a gptjax export ({EXPORT_MARKER})")
    from gptjax.train.checkpoint import restore_params

    try:
        params, meta, found_step = restore_params(path, step)
    except FileNotFoundError:
        raise GptjaxError(f"{path} holds no checkpoint yet; train first or pass another --workdir") from None
    cfg = config_lib.from_dict(meta["config"])
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return LM(cfg, params, tokenizers.from_json_dict(meta["tokenizer"]), found_step, meta)
