"""The one definition of loss / perplexity / bits-per-byte over a prepared split, used by `gptjax eval`,
the quickstart and the training loop."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gptjax.data import store
from gptjax.errors import GptjaxError


def summarize(nll_sum: float, n_tokens: int, bytes_per_token: float) -> dict:
    """loss (mean NLL in nats per token), perplexity and bits per byte from a summed NLL over `n_tokens`."""
    loss = nll_sum / max(n_tokens, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bpb": loss / math.log(2) / max(bytes_per_token, 1e-12)}


def bytes_per_token(data_dir: str | Path, split: str) -> float:
    """UTF-8 bytes per token of a split, from its manifest."""
    info = store.read_manifest(data_dir)["splits"][split]
    return info["n_bytes"] / max(info["n_tokens"], 1)


def split_tokens(data_dir: str | Path, split: str, max_tokens: int = 0) -> np.ndarray:
    tokens = np.concatenate([np.asarray(store.read_tokens(p)) for p in store.split_shards(data_dir, split)])
    return tokens[: max_tokens + 1] if max_tokens else tokens


def evaluate_split(lm, data_dir: Path, split: str, batch_size: int, max_tokens: int = 0) -> dict:
    """Exact loss over a split in consecutive non-overlapping windows of block_size (+1 target)."""
    block = lm.config.block_size
    tokens = split_tokens(data_dir, split, max_tokens)
    n_windows = (len(tokens) - 1) // block
    if n_windows == 0:
        raise GptjaxError(f"the {split} split has {len(tokens)} tokens, fewer than block_size + 1 = {block + 1}")
    nll, count = 0.0, 0
    for start in tqdm(range(0, n_windows, batch_size), desc=f"eval {split}", unit="batch"):
        rows = [tokens[i * block: i * block + block + 1].astype(np.int32).tolist()
                for i in range(start, min(start + batch_size, n_windows))]
        for lp in lm.token_logprobs(rows):
            nll -= float(lp.sum())
            count += len(lp)
    return {"split": split, "tokens": count, **summarize(nll, count, bytes_per_token(data_dir, split))}
