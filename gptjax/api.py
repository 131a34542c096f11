"""`gptjax.load(path) -> LM`: the one door to a trained model for evaluation, generation, finetuning and export."""
from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import config as config_lib
from gptjax.config import Config
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.generate import SamplingParams, check_sampling, check_token_ids, extrapolation, generate_ids
from gptjax.model.transformer import Transformer
from gptjax.model.losses import token_nll

EXPORT_MARKER = "gptjax_export.json"
NO_STOP_ID = -1  # never sampled, so generation runs to max_new_tokens
NO_TOKENIZER_HELP = ("re-import it with its tokenizer (gptjax import --format hf --src DIR --workdir NEW "
                     "--tokenizer-dir TOKDIR), or use the id methods logits / token_logprobs / generate_ids")


class LM:
    """A language model: config, params, tokenizer (None for weights-only imports), and pure functions over them."""

    def __init__(self, cfg: Config, params, tokenizer: tokenizers.Tokenizer | None, step: int | None = None,
                 meta: dict | None = None):
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

    def _text_tokenizer(self, method: str) -> tokenizers.Tokenizer:
        if self.tokenizer is None:
            raise GptjaxError(f"LM.{method} needs a tokenizer and this model has none (imported weights-only); "
                              + NO_TOKENIZER_HELP)
        return self.tokenizer

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
        token_ids = np.asarray(token_ids, np.int64)
        if token_ids.ndim == 1:
            token_ids = token_ids[None]
        check_token_ids(token_ids, self.config.vocab_size)
        batch, _ = self._padded_batch(token_ids.tolist())
        out = np.asarray(self._forward(self.params, batch))
        return out[:, : token_ids.shape[1], : self.config.vocab_size]

    def token_logprobs(self, token_ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """log p(x_t | x_<t) for t = 1..len-1 of each sequence (right-padding never affects real tokens)."""
        if any(len(t) < 2 for t in token_ids):
            raise GptjaxError("scoring needs sequences of at least 2 tokens")
        check_token_ids(token_ids, self.config.vocab_size)
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
        tokenizer = self._text_tokenizer("score")
        eot = tokenizer.eot_id
        sequences, starts = [], []
        for i, text in enumerate(texts):
            prefix = [eot] + (tokenizer.encode(contexts[i]) if contexts is not None else [])
            sequences.append(prefix + tokenizer.encode(text))
            starts.append(len(prefix) - 1)
        logprobs = self.token_logprobs(sequences)
        return np.array([float(lp[start:].sum()) for lp, start in zip(logprobs, starts)])

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int = 200, temperature: float = 1.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int = 0, chunk: int = 0,
                     stop_id: int | None = None, allow_extrapolation: bool = False,
                     on_chunk: Callable[[list[list[int]]], None] | None = None) -> list[list[int]]:
        """New token ids after each prompt, up to `stop_id` (default: the tokenizer's <|endoftext|>; without a
        tokenizer, none). `on_chunk` receives each chunk's new ids as they are decoded.

        With rope/alibi/none positions, going past the trained block_size is an error unless `allow_extrapolation`
        (then a warning); learned/sinusoidal positions slide a window of block_size tokens past their limit."""
        prompt_ids = [list(p) for p in prompt_ids]
        sampling = SamplingParams(temperature, top_k, top_p)
        check_sampling(sampling, max_new_tokens)  # argument errors before the length check that uses them
        note = extrapolation(self.config, max((len(p) for p in prompt_ids), default=0), max_new_tokens)
        if note and not allow_extrapolation:
            raise GptjaxError(f"{note}; shorten the prompt or max_new_tokens, or pass allow_extrapolation=True "
                              "(CLI: --allow-extrapolation) to generate anyway")
        if note:
            warnings.warn(note, stacklevel=2)
        if stop_id is None:
            stop_id = self.tokenizer.eot_id if self.tokenizer is not None else NO_STOP_ID
        return generate_ids(self.model, self.params, prompt_ids, max_new_tokens, stop_id, sampling, seed, chunk,
                            on_chunk)

    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 200, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, chunk: int = 0,
                 stream: Callable[[list[str]], None] | None = None, allow_extrapolation: bool = False) -> list[str]:
        """Continuations of each prompt (an empty one starts from <|endoftext|>); `stream` receives each chunk's new
        text per prompt as it is decoded. Limits as in `generate_ids`."""
        tokenizer = self._text_tokenizer("generate")
        if isinstance(prompts, str):
            prompts = [prompts]
        prompt_ids = [tokenizer.encode(p) or [tokenizer.eot_id] for p in prompts]
        on_chunk = None
        if stream is not None:
            on_chunk = lambda ids: stream([tokenizer.decode(t) for t in ids])
        ids = self.generate_ids(prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, chunk,
                                allow_extrapolation=allow_extrapolation, on_chunk=on_chunk)
        return [tokenizer.decode(t) for t in ids]


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
    tokenizer = tokenizers.from_json_dict(meta["tokenizer"]) if meta.get("tokenizer") is not None else None
    return LM(cfg, params, tokenizer, found_step, meta)
