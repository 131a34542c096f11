"""The one definition of loss / perplexity / bits-per-byte over a prepared split.

`evaluate_batches` reduces any scorer's (summed NLL, target count) over batches into the reported metrics; the
training loop feeds it its sharded eval step over fixed validation batches, `gptjax eval` and the quickstart feed it
the model's own scorer over every consecutive window of a split (`evaluate_split`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm.auto import tqdm

from gptjax.data import store
from gptjax.data import tokenizer as tokenizers
from gptjax.data.remote import read_split
from gptjax.errors import GptjaxError

Scorer = Callable[[object], tuple[float, float]]  # a batch -> (summed NLL in nats, number of scored targets)


def summarize(nll_sum: float, n_tokens: float, bytes_per_token: float) -> dict:
    """loss (mean NLL in nats per token), perplexity and bits per byte from a summed NLL over `n_tokens`."""
    if n_tokens <= 0:
        raise GptjaxError("evaluation scored no tokens (every target was masked out); check the data")
    loss = nll_sum / n_tokens
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bpb": loss / math.log(2) / max(bytes_per_token, 1e-12)}


def evaluate_batches(score: Scorer, batches: Iterable, bytes_per_token: float) -> dict:
    """`summarize` over the scorer's sums of every batch; also returns the scored token count as `tokens`."""
    nll, count = 0.0, 0.0
    for batch in batches:
        batch_nll, batch_count = score(batch)
        nll += float(batch_nll)
        count += float(batch_count)
    return {"tokens": int(count), **summarize(nll, count, bytes_per_token)}


def bytes_per_token(data_dir: str | Path, split: str) -> float:
    """UTF-8 bytes per token of a split, from its manifest."""
    info = store.read_manifest(data_dir)["splits"][split]
    return info["n_bytes"] / max(info["n_tokens"], 1)


def check_data_matches(data_dir: str | Path, tokenizer: tokenizers.Tokenizer | None) -> None:
    """Refuses data prepared with another tokenizer than `tokenizer` (by fingerprint)."""
    if tokenizer is None:
        return
    prepared = store.read_manifest(data_dir)["tokenizer"]
    if prepared["fingerprint"] != tokenizers.fingerprint(tokenizer):
        raise GptjaxError(f"{data_dir} was prepared with another tokenizer ({prepared.get('kind')}, vocab "
                          f"{prepared.get('vocab_size')}) than the model's ({tokenizer.kind}, vocab "
                          f"{tokenizer.vocab_size}); prepare it with the model's tokenizer "
                          f"(`gptjax prepare ... --tokenizer-dir WORKDIR/tokenizer`)")


def split_tokens(data_dir: str | Path, split: str, vocab_size: int, max_tokens: int = 0) -> np.ndarray:
    """A split's tokens in order (the first `max_tokens` + 1 when given), checked to lie in [0, vocab_size)."""
    tokens = read_split(data_dir, split)
    tokens = tokens[: max_tokens + 1] if max_tokens else tokens
    if tokens.size and int(tokens.max()) >= vocab_size:
        where = int(np.argmax(tokens >= vocab_size))
        raise GptjaxError(f"{data_dir} ({split}) holds token id {int(tokens[where])} at position {where}, outside the "
                          f"model's vocabulary [0, {vocab_size}); it was prepared for another model")
    return tokens


def evaluate_split(lm, data_dir: Path, split: str, batch_size: int, max_tokens: int = 0) -> dict:
    """Exact loss over a split in consecutive non-overlapping windows of block_size (+1 target)."""
    check_data_matches(data_dir, lm.tokenizer)
    tokens = split_tokens(data_dir, split, lm.config.vocab_size, max_tokens)
    return {"split": split, **evaluate_tokens(lm, tokens, batch_size, bytes_per_token(data_dir, split),
                                              f"the {split} split", progress=f"eval {split}")}


def evaluate_components(lm, data_cfg, split: str, batch_size: int, max_tokens: int = 0) -> dict:
    """`evaluate_split` of each `data.mixture` component of `data_cfg` on its own `split`, keys suffixed with the
    component's name (tokens/web, loss/web, ppl/web, bpb/web, ...); {} without a mixture."""
    if not data_cfg.mixture:
        return {}
    from gptjax.config import mixture_names
    from gptjax.data.sources import mixture_entries

    results = {}
    for name, (path, _) in zip(mixture_names(data_cfg.mixture), mixture_entries(data_cfg)):
        result = evaluate_split(lm, path, split, batch_size, max_tokens)
        results.update({f"{key}/{name}": result[key] for key in ("tokens", "loss", "ppl", "bpb")})
    return results


def evaluate_tokens(lm, tokens: np.ndarray, batch_size: int, per_byte: float, what: str,
                    progress: str | None = None) -> dict:
    """`lm`'s loss over `tokens` (`what` names them in errors) in consecutive non-overlapping windows of block_size
    (+1 target); `per_byte` is their UTF-8 bytes per token; `progress` titles a progress bar (None: no bar)."""
    block = lm.config.block_size
    n_windows = (len(tokens) - 1) // block
    if n_windows == 0:
        raise GptjaxError(f"{what} has {len(tokens)} tokens, fewer than block_size + 1 = {block + 1}")

    def windows(start: int) -> list[list[int]]:
        return [tokens[i * block: i * block + block + 1].astype(np.int32).tolist()
                for i in range(start, min(start + batch_size, n_windows))]

    def score(rows: list[list[int]]) -> tuple[float, float]:
        logprobs = lm.token_logprobs(rows, batch_size)
        return -sum(float(lp.sum()) for lp in logprobs), sum(len(lp) for lp in logprobs)

    starts = range(0, n_windows, batch_size)
    if progress is not None:
        starts = tqdm(starts, desc=progress, unit="batch")
    return evaluate_batches(score, (windows(start) for start in starts), per_byte)
