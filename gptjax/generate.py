"""Sampling and the KV-cache decode loop, inside jit.

Prompts of different lengths are left-padded (padding is segment 0, so it is never attended to) and prefilled in
one call; new tokens are then produced by a `lax.while_loop` in chunks, so Python dispatches once per chunk, not
per token, and a caller can stream each chunk's text.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.config import ModelConfig
from gptjax.errors import GptjaxError
from gptjax.model.attention import KVCache, init_cache
from gptjax.model.transformer import PADDED_LOGIT, Transformer


class SamplingParams(NamedTuple):
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off


def check_sampling(sp: SamplingParams, max_new_tokens: int) -> None:
    """Refuses sampling settings outside their meaningful range, naming the argument, its value and the range."""
    # written as `not (in range)` so that NaN is refused too
    problems = [("temperature", sp.temperature, "must be >= 0 (0 = greedy)", not sp.temperature >= 0),
                ("top_p", sp.top_p, "must be in (0, 1] (1 = off)", not 0 < sp.top_p <= 1),
                ("top_k", sp.top_k, "must be >= 0 (0 = off)", not sp.top_k >= 0),
                ("max_new_tokens", max_new_tokens, "must be >= 1", not max_new_tokens >= 1)]
    for name, value, allowed, bad in problems:
        if bad:
            raise GptjaxError(f"generation argument {name}={value!r} {allowed}; pass a value in that range")


def check_token_ids(sequences: Sequence[Sequence[int]], vocab_size: int) -> None:
    """Refuses any id outside [0, vocab_size): the model's real vocabulary, not its padded embedding table."""
    for row, ids in enumerate(sequences):
        ids_T = np.asarray(ids, np.int64).reshape(-1)
        bad_T = (ids_T < 0) | (ids_T >= vocab_size)
        if bad_T.any():
            position = int(np.argmax(bad_T))
            raise GptjaxError(f"token id {int(ids_T[position])} at position {position} of sequence {row} is outside "
                              f"the model's vocabulary [0, {vocab_size}); pass ids its tokenizer produces")


def extrapolation(cfg: ModelConfig, longest_prompt: int, max_new_tokens: int) -> str | None:
    """Why generating `max_new_tokens` after the longest prompt goes past the trained length, or None.

    Only positions without a table (rope, alibi, none) extrapolate: learned/sinusoidal tables instead slide a window
    of the last block_size tokens past their position limit, as nanoGPT crops."""
    total = longest_prompt + max_new_tokens
    if cfg.position in ("learned", "sinusoidal") or total <= cfg.block_size:
        return None
    return (f"a prompt of {longest_prompt} tokens + max_new_tokens={max_new_tokens} reaches position {total}, past "
            f"the trained block_size {cfg.block_size} of this {cfg.position}-position model: "
            f"this extrapolates past the trained length")


def sample(logits_BV: jax.Array, rng: jax.Array, sp: SamplingParams) -> jax.Array:
    """Next token ids [B] from logits: greedy, or temperature with optional top-k and nucleus (top-p) filtering."""
    logits_BV = logits_BV.astype(jnp.float32)
    if sp.temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / sp.temperature
    if sp.top_k > 0:
        kth_B1 = jax.lax.top_k(logits_BV, min(sp.top_k, logits_BV.shape[-1]))[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, PADDED_LOGIT, logits_BV)
    if sp.top_p < 1.0:
        logits_BV = top_p_filter(logits_BV, sp.top_p)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def top_p_filter(logits_BV: jax.Array, top_p) -> jax.Array:
    """Nucleus filtering: logits outside the smallest prefix (by probability) whose mass reaches `top_p` set to
    PADDED_LOGIT; the top token always stays. `top_p` is a float or a per-row [B, 1] array (callers skip the
    filter where it is 1)."""
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
    cutoff_index_B = jnp.minimum(jnp.sum(cum_BV < top_p, axis=-1), logits_BV.shape[-1] - 1)
    cutoff_B1 = jnp.take_along_axis(sorted_BV, cutoff_index_B[:, None], axis=-1)
    return jnp.where(logits_BV < cutoff_B1, PADDED_LOGIT, logits_BV)


class DecodeState(NamedTuple):
    cache: KVCache
    last_B: jax.Array  # the token fed next
    pos_B: jax.Array  # its position
    done_B: jax.Array
    rng: jax.Array


def left_pad(prompts: list[list[int]], multiple: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens, positions and segment ids [B, P] with prompts right-aligned (P rounded up to `multiple`)."""
    longest = max(len(p) for p in prompts)
    width = multiple * -(-longest // multiple)
    tokens = np.zeros((len(prompts), width), np.int32)
    positions = np.zeros_like(tokens)
    segments = np.zeros_like(tokens)
    for row, prompt in enumerate(prompts):
        pad = width - len(prompt)
        tokens[row, pad:] = prompt
        positions[row, pad:] = np.arange(len(prompt))
        segments[row, pad:] = 1
    return tokens, positions, segments


@functools.partial(jax.jit, static_argnames=("model", "sp", "max_len"))
def prefill(params, tokens_BP, positions_BP, segments_BP, rng, *, model: Transformer, sp: SamplingParams, max_len: int,
            eot_id: int):
    """Runs the prompts through the model, filling a fresh cache; samples the first new token."""
    cache = init_cache(model.cfg, tokens_BP.shape[0], max_len)
    if not model.cfg.scan_layers:  # per-layer buffers: the decode loop then updates each in place (no restacking)
        cache = cache._replace(k_LBGSK=tuple(cache.k_LBGSK), v_LBGSK=tuple(cache.v_LBGSK))
    logits_BPV, cache = model.apply({"params": params}, tokens_BP, positions_BP, segments_BP, cache=cache)
    rng, step_rng = jax.random.split(rng)
    first_B = sample(logits_BPV[:, -1], step_rng, sp)
    return DecodeState(cache, first_B, positions_BP[:, -1] + 1, first_B == eot_id, rng)


@functools.partial(jax.jit, static_argnames=("model", "sp", "n_steps"), donate_argnames=("state",))
def decode_chunk(params, state: DecodeState, *, model: Transformer, sp: SamplingParams, n_steps: int, eot_id: int):
    """Emits up to n_steps tokens per row [B, n_steps] (state.last_B first), stopping early once every row is done."""
    batch = state.last_B.shape[0]
    out_BN = jnp.full((batch, n_steps), eot_id, jnp.int32)

    def cond(carry):
        i, s, _ = carry
        return (i < n_steps) & ~jnp.all(s.done_B & (i > 0))

    def body(carry):
        i, s, out = carry
        out = jax.lax.dynamic_update_slice(out, s.last_B[:, None], (0, i))
        logits_B1V, cache = model.apply({"params": params}, s.last_B[:, None], s.pos_B[:, None],
                                        jnp.ones((batch, 1), jnp.int32), cache=s.cache)
        rng, step_rng = jax.random.split(s.rng)
        nxt_B = jnp.where(s.done_B, eot_id, sample(logits_B1V[:, 0], step_rng, sp))
        done_B = s.done_B | (nxt_B == eot_id)
        return i + 1, DecodeState(cache, nxt_B, s.pos_B + 1, done_B, rng), out

    n, state, out_BN = jax.lax.while_loop(cond, body, (jnp.int32(0), state, out_BN))
    return state, out_BN, n


class WindowState(NamedTuple):
    tokens_BW: jax.Array  # the last W tokens of each row, right-aligned; left padding is segment 0
    n_real_B: jax.Array
    done_B: jax.Array
    rng: jax.Array


def window_layout(n_real_B: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """Positions and segment ids of right-aligned rows holding n_real tokens in a window of `width`."""
    pad_B1 = (width - n_real_B)[:, None]
    index_W = jnp.arange(width)[None, :]
    return jnp.maximum(index_W - pad_B1, 0), (index_W >= pad_B1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "sp", "n_steps"), donate_argnames=("state",))
def window_chunk(params, state: WindowState, *, model: Transformer, sp: SamplingParams, n_steps: int, eot_id: int):
    """Like decode_chunk, for text longer than the position limit: each token is predicted from the last
    block_size tokens, recomputed (nanoGPT's cropping), still inside one jit call per chunk."""
    batch, width = state.tokens_BW.shape
    out_BN = jnp.full((batch, n_steps), eot_id, jnp.int32)

    def cond(carry):
        i, s, _ = carry
        return (i < n_steps) & ~jnp.all(s.done_B)

    def body(carry):
        i, s, out = carry
        positions_BW, segments_BW = window_layout(s.n_real_B, width)
        logits_BWV = model.apply({"params": params}, s.tokens_BW, positions_BW, segments_BW)
        rng, step_rng = jax.random.split(s.rng)
        nxt_B = jnp.where(s.done_B, eot_id, sample(logits_BWV[:, -1], step_rng, sp))
        out = jax.lax.dynamic_update_slice(out, nxt_B[:, None], (0, i))
        tokens_BW = jnp.concatenate([s.tokens_BW[:, 1:], nxt_B[:, None]], axis=1)
        state = WindowState(tokens_BW, jnp.minimum(s.n_real_B + 1, width), s.done_B | (nxt_B == eot_id), rng)
        return i + 1, state, out

    n, state, out_BN = jax.lax.while_loop(cond, body, (jnp.int32(0), state, out_BN))
    return state, out_BN, n


def _window_start(prompts: list[list[int]], width: int, seed: int) -> WindowState:
    tokens = np.zeros((len(prompts), width), np.int32)
    n_real = np.zeros((len(prompts),), np.int32)
    for row, prompt in enumerate(prompts):
        kept = prompt[-width:]
        tokens[row, width - len(kept):] = kept
        n_real[row] = len(kept)
    return WindowState(jnp.asarray(tokens), jnp.asarray(n_real), jnp.zeros((len(prompts),), bool),
                       jax.random.PRNGKey(seed))


def generate_ids(model: Transformer, params, prompts: list[list[int]], max_new_tokens: int, eot_id: int,
                 sp: SamplingParams = SamplingParams(), seed: int = 0, chunk: int = 0,
                 on_chunk: Callable[[list[list[int]]], None] | None = None) -> list[list[int]]:
    """New token ids per prompt (without the stop token; an eot_id outside the vocabulary, e.g. -1, never stops).
    `on_chunk` receives each chunk's new ids as they come.

    Within the position limit decoding uses the KV cache; past it, a sliding window of block_size tokens."""
    cfg: ModelConfig = model.cfg
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GptjaxError("every prompt needs at least one token (an empty prompt can start from <|endoftext|>)")
    check_sampling(sp, max_new_tokens)
    check_token_ids(prompts, cfg.vocab_size)
    longest_prompt = max(len(p) for p in prompts)
    use_cache = longest_prompt + max_new_tokens <= cfg.position_limit
    if use_cache:
        tokens, positions, segments = left_pad(prompts)
        state = prefill(params, tokens, positions, segments, jax.random.PRNGKey(seed), model=model, sp=sp,
                        max_len=tokens.shape[1] + max_new_tokens, eot_id=eot_id)
        step_fn = decode_chunk
    else:
        state = _window_start(prompts, cfg.block_size, seed)
        step_fn = window_chunk
    chunk = chunk or max_new_tokens
    results: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    produced = 0
    while produced < max_new_tokens and not all(finished):
        n_steps = min(chunk, max_new_tokens - produced)
        state, out_BN, n = step_fn(params, state, model=model, sp=sp, n_steps=n_steps, eot_id=eot_id)
        out_BN = np.asarray(out_BN)[:, : int(n)]
        produced += n_steps
        new = []
        for row, ids in enumerate(out_BN.tolist()):
            kept = []
            for tok in ids:
                if finished[row]:
                    break
                if tok == eot_id:
                    finished[row] = True
                    break
                kept.append(tok)
            results[row].extend(kept)
            new.append(kept)
        if on_chunk is not None:
            on_chunk(new)
    return results
