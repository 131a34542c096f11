"""`gptjax.load(path) -> LM`: the one door to a trained model for evaluation, generation, finetuning and export."""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from gptjax import config as config_lib
from gptjax.config import Config
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.eval import requests as eval_requests
from gptjax.export import EXPORT_MARKER, load_export
from gptjax.generate import SamplingParams, check_sampling, check_token_ids, extrapolation, generate_ids
from gptjax.model.lora import merge_lora
from gptjax.model.transformer import Transformer

NO_STOP_ID = -1  # never sampled, so generation runs to max_new_tokens
WEIGHT_DTYPES = ("float32", "bfloat16")  # LM.with_dtype / load(dtype=): weights and compute together
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

    def with_dtype(self, dtype: str) -> "LM":
        """This model with its weights stored in `dtype` and computing in it: bfloat16 halves the bytes read per
        decoded token; matmuls still accumulate in float32, norms, softmax and logits stay float32 (greedy tokens
        can then differ from float32's where two logits are within bfloat16 rounding)."""
        if dtype not in WEIGHT_DTYPES:
            raise GptjaxError(f"dtype {dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
        params = jax.tree_util.tree_map(
            lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, self.params)
        cfg = dataclasses.replace(self.cfg, model=dataclasses.replace(self.cfg.model, dtype=dtype))
        return LM(cfg, params, self.tokenizer, self.step, self.meta)

    def with_lora_merged(self) -> "LM":
        """This model as a plain one: LoRA adapters folded into their kernels (what an export stores, so it stands
        alone without its base); itself where it has no adapters."""
        if self.config.lora_rank == 0:
            return self
        params, model_cfg = merge_lora(self.params, self.config)
        cfg = dataclasses.replace(self.cfg, model=model_cfg,
                                  finetune=dataclasses.replace(self.cfg.finetune, freeze="none"))
        return LM(cfg, params, self.tokenizer, self.step, self.meta)

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
            raise GptjaxError(f"sequence of {longest} tokens exceeds the model's position limit "
                              f"{self.config.position_limit}")
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

    def token_logprobs(self, token_ids: Sequence[Sequence[int]], batch_size: int = 32) -> list[np.ndarray]:
        """log p(x_t | x_<t) for t = 1..len-1 of each sequence, scored by the eval engine (gptjax/eval/requests.py)."""
        if any(len(t) < 2 for t in token_ids):
            raise GptjaxError("scoring needs sequences of at least 2 tokens")
        check_token_ids(token_ids, self.config.vocab_size)
        longest = max((len(t) - 1 for t in token_ids), default=0)
        if longest > self.config.position_limit:
            raise GptjaxError(f"sequence of {longest} tokens exceeds the model's position limit "
                              f"{self.config.position_limit}")
        scores, _ = eval_requests.score_tokens(self.model, self.params, [(t[:1], t[1:]) for t in token_ids],
                                               self.config.position_limit, batch_size)
        return [logprob_N for logprob_N, _ in scores]

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
        return np.array([float(lp[start:].sum(dtype=np.float64)) for lp, start in zip(logprobs, starts)])

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
        """Continuations of each prompt (an empty one starts from <|endoftext|>; an hf tokenizer that adds BOS gets
        BOS first, as HF's `tokenizer(prompt)`); `stream` receives each chunk's new text per prompt as it is decoded.
        Limits as in `generate_ids`."""
        tokenizer = self._text_tokenizer("generate")
        if isinstance(prompts, str):
            prompts = [prompts]
        prompt_ids = [tokenizers.prompt_ids(tokenizer, p) for p in prompts]
        on_chunk = None
        if stream is not None:
            on_chunk = lambda ids: stream([tokenizer.decode(t) for t in ids])
        ids = self.generate_ids(prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, chunk,
                                allow_extrapolation=allow_extrapolation, on_chunk=on_chunk)
        return [tokenizer.decode(t) for t in ids]

    def class_probabilities(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """float32 [len(texts), num_classes]: the classifier head's probabilities (a `classify` finetune), each text
        read after <|endoftext|> as in training and cut to its first block_size tokens."""
        if not self.config.num_classes:
            raise GptjaxError("LM.classify needs a classifier (a run finetuned with train.objective=classify); this "
                              "model has no classifier head (model.num_classes=0)")
        tokenizer = self._text_tokenizer("classify")
        ids = [([tokenizer.eot_id] + tokenizer.encode(text))[: self.config.block_size] for text in texts]
        probabilities = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            rows = chunk + [chunk[-1]] * (eval_requests.bucket_rows(len(chunk), batch_size) - len(chunk))
            tokens, lengths = self._padded_batch(rows)
            logits = self._class_logits(self.params, tokens, np.asarray(lengths, np.int32))
            probabilities.append(np.asarray(jax.nn.softmax(logits, axis=-1))[: len(chunk)])
        return np.concatenate(probabilities) if probabilities else np.zeros((0, self.config.num_classes), np.float32)

    def classify(self, texts: Sequence[str], batch_size: int = 32) -> list[str]:
        """The predicted class of each text: its name from finetune.labels (else the class index as a string)."""
        names = self.cfg.finetune.labels or tuple(str(i) for i in range(self.config.num_classes))
        return [names[i] for i in self.class_probabilities(texts, batch_size).argmax(axis=-1)]

    @functools.cached_property
    def _class_logits(self) -> Callable:
        from gptjax.model.losses import class_logits

        return jax.jit(lambda params, tokens, lengths: class_logits(params, self.model, tokens, lengths))

    # lm-eval's three request kinds (definitions and batching: gptjax/eval/requests.py)

    def loglikelihood_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 32,
                             progress: bool = False) -> eval_requests.LoglikelihoodResults:
        """(sum of log p(continuation | context), is_greedy) per (context ids, continuation ids), in input order.
        A pair longer than block_size + 1 keeps its last block_size + 1 tokens (lm-eval's left truncation); the
        result's `n_truncated` counts such pairs, `n_rows` the forward rows run (rows that are prefixes of others
        are shared)."""
        check_token_ids([list(c) + list(x) for c, x in pairs], self.config.vocab_size)
        return eval_requests.score_pairs(self.model, self.params, pairs, self.config.block_size, batch_size, progress)

    def loglikelihood(self, requests: Sequence[tuple[str, str]], batch_size: int = 32, progress: bool = False,
                      prefix_eot: bool = False) -> eval_requests.LoglikelihoodResults:
        """(sum of log p(continuation | context), is_greedy) per (context, continuation) text pair, tokenized as
        lm-eval's HF backend does: by default (prefix_eot=False) only an empty context becomes <|endoftext|>;
        prefix_eot=True puts <|endoftext|> before every context (as `score` and training documents do).
        Truncation statistics as in `loglikelihood_tokens`."""
        tokenizer = self._text_tokenizer("loglikelihood")
        eot = tokenizer.eot_id
        pairs = []
        for context, continuation in requests:
            context_ids, continuation_ids = eval_requests.encode_pair(tokenizer.encode, context, continuation, eot)
            if prefix_eot and context:
                context_ids = [eot] + context_ids
            pairs.append((context_ids, continuation_ids))
        return self.loglikelihood_tokens(pairs, batch_size, progress)

    def loglikelihood_rolling_tokens(self, documents: Sequence[Sequence[int]], prefix_id: int, batch_size: int = 32,
                                     progress: bool = False) -> list[float]:
        """Summed log-likelihood of every token of each document, scored in disjoint block_size windows after
        `prefix_id` (lm-eval's rolling windows with context_len 1)."""
        windows = [eval_requests.rolling_windows(ids, prefix_id, self.config.block_size) for ids in documents]
        scores = self.loglikelihood_tokens([w for doc in windows for w in doc], batch_size, progress)
        return eval_requests.sum_rolling(scores, [len(doc) for doc in windows])

    def loglikelihood_rolling(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> list[float]:
        """Summed log-likelihood of each whole text (perplexity tasks), as lm-eval's HF loglikelihood_rolling: the
        first window starts after <|endoftext|>."""
        tokenizer = self._text_tokenizer("loglikelihood_rolling")
        return self.loglikelihood_rolling_tokens([tokenizer.encode(t) for t in texts], tokenizer.eot_id, batch_size,
                                                 progress)

    def generate_until(self, requests: Sequence[tuple[str, dict]], batch_size: int = 32,
                       progress: bool = False) -> list[str]:
        """Continuation of each (context, gen_kwargs), cut at the first stop string, in input order. gen_kwargs as
        lm-eval's: `until` (str or list; <|endoftext|> always stops), `max_gen_toks` (default 256), greedy unless
        do_sample / temperature > 0 (then top_k, top_p, seed). Contexts keep their last block_size - max_gen_toks
        tokens; requests run longest first, batched per distinct gen_kwargs. An empty context starts from
        <|endoftext|> (lm-eval's HF backend would feed it as a row of padding only)."""
        tokenizer = self._text_tokenizer("generate_until")
        eot_text = tokenizer.decode([tokenizer.eot_id])
        settings = [eval_requests.generation_settings(kwargs, eot_text) for _, kwargs in requests]
        encoded = [tokenizer.encode(context) for context, _ in requests]
        outputs: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generate_until", unit="req", disable=not progress)
        for group_settings, indices in eval_requests.group_by_settings(settings):
            indices = sorted(indices, key=lambda i: (-len(encoded[i]), requests[i][0]))
            prompts = eval_requests.generation_prompts([encoded[i] for i in indices], group_settings,
                                                       self.config.block_size, tokenizer.eot_id)
            for start in range(0, len(indices), batch_size):
                batch = prompts[start: start + batch_size]
                # repeat the last prompt up to a power-of-two batch so few shapes compile
                padded = batch + [batch[-1]] * (eval_requests.bucket_rows(len(batch), batch_size) - len(batch))
                texts = eval_requests.generate_batch_until(self.generate_ids, tokenizer.decode, padded,
                                                           group_settings)
                for i, text in zip(indices[start: start + batch_size], texts):
                    outputs[i] = text
                bar.update(len(batch))
        bar.close()
        return outputs


def load(path: str | Path, step: int | None = None, dtype: str | None = None, ema: bool = False) -> LM:
    """An LM from a training workdir (its latest checkpoint, or `step`) or from a `gptjax export` directory;
    `dtype` ("float32" or "bfloat16") stores the weights and computes in it (`LM.with_dtype`), None as saved;
    `ema` takes a workdir's moving average of the weights (train.ema_decay) in place of its weights."""
    if dtype is not None and dtype not in WEIGHT_DTYPES:  # before reading anything
        raise GptjaxError(f"dtype {dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    lm = _load(path, step, ema)
    return lm if dtype is None else lm.with_dtype(dtype)


def _load(location: str | Path, step: int | None, ema: bool = False) -> LM:
    from gptjax import fileio

    if fileio.is_remote(location):
        fileio.check_remote_root(str(location), "model")
    path = fileio.as_path(location)
    if (path / EXPORT_MARKER).is_file():

        if fileio.is_remote(location):  # safetensors are memory-mapped: read from a local copy, fetched once
            from gptjax.data.sources import cache_root

            path = fileio.cached_copy(str(location), cache_root(config_lib.DataConfig()) / "remote")
        if ema:
            raise GptjaxError(f"{location} is an export, which holds one set of weights; --ema reads a training "
                              f"workdir's moving average: export that with `gptjax export --ema`")
        return LM(*load_export(path))
    if not (path / "checkpoints").is_dir():
        raise GptjaxError(f"{path} is neither a training workdir (no checkpoints/) nor a gptjax export "
                          f"({EXPORT_MARKER})")
    from gptjax.checkpoint import restore_params

    try:
        params, meta, found_step = restore_params(path, step, load_base=lambda source: load(source).params, ema=ema)
    except FileNotFoundError:
        raise GptjaxError(f"{path} holds no checkpoint yet; train first or pass another --workdir") from None
    cfg = config_lib.from_dict(meta["config"])
    params = jax.tree_util.tree_map(jnp.asarray, params)
    tokenizer = tokenizers.from_json_dict(meta["tokenizer"]) if meta.get("tokenizer") is not None else None
    return LM(cfg, params, tokenizer, found_step, meta)
