"""A continuous-batching decode engine over a slot-based KV cache.

The cache holds `max_batch` rows (slots) of `max_context` tokens each, so memory is bounded by max_batch × context.
A request takes a free slot (lowest first): its prompt is prefilled into that row alone (one jitted call per prompt,
its length padded up to a power-of-two bucket so few shapes compile), then every active slot advances by one token
per decode step (one jitted call over the leading slots that hold every active request). Requests join free slots
and leave when finished between decode steps.

Per-slot positions need no change to the model, whose attention masks by token position and segment id, not by
cache column: all slots write a decode step's keys into one shared column (the cache index, a ring pointer that wraps
at max_context), each at its own position; a prompt is placed in its row just behind the pointer, so the pointer
reaches its first column only after max_context - prompt_length steps, more than the request can take. Columns a
row does not own are segment 0, which no query attends to. The decode step is thus the model's ordinary batched
KV-cache step (as `LM.generate`'s), with positions per row. Sampling is per slot (temperature, top_p, its own PRNG
key from the request's seed), so a request's output never depends on its neighbours; temperature 0 is greedy, token
for token what `LM.generate` gives.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.generate import top_p_filter
from gptjax.model.attention import KVCache, init_cache
from gptjax.model.transformer import Transformer

TOP_LOGPROBS = 5  # alternatives computed per position (OpenAI's `logprobs` allows at most 5)
MIN_BUCKET = 16

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should retry later (HTTP 429)."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no new requests (HTTP 503)."""


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


class TokenEvent(NamedTuple):
    """One generated token: its id, log-probability and the TOP_LOGPROBS most likely (id, logprob) alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


class PromptEvent(NamedTuple):
    """The prompt scored: log p(prompt[t] | prompt[:t]) for t >= 1, and the top alternatives at each of those t."""

    logprobs: list[float]
    top: list[list[tuple[int, float]]]


class FinishEvent(NamedTuple):
    reason: str  # "stop" (a stop token), "length" (max_tokens), "cancelled", "error" (the engine failed)


Event = TokenEvent | PromptEvent | FinishEvent


@dataclasses.dataclass
class Request:
    """One sequence to continue. `on_event` is called from the engine's thread with each event in order; the last
    one is a FinishEvent. `cancel()` makes the engine drop it before its next step."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop_ids: frozenset[int]
    on_event: Callable[[Event], None]
    score_prompt: bool = False
    cancelled: bool = False
    produced: int = 0

    def cancel(self) -> None:
        self.cancelled = True


def prefill_buckets(max_context: int) -> tuple[int, ...]:
    """Prompt widths that compile: powers of two from MIN_BUCKET, then max_context itself."""
    widths, width = [], MIN_BUCKET
    while width < max_context:
        widths.append(width)
        width *= 2
    return tuple(widths) + (max_context,)


def decode_row_buckets(max_batch: int) -> tuple[int, ...]:
    """How many leading slots a decode step runs: powers of two from 2 below max_batch, then max_batch (1 alone when
    max_batch is 1). A lightly loaded server thus skips its free slots (taken lowest first)."""
    if max_batch == 1:
        return (1,)
    return tuple(1 << i for i in range(1, max_batch.bit_length()) if 1 << i < max_batch) + (max_batch,)


def cache_rows(max_batch: int) -> int:
    """Rows the cache holds: one spare past max_batch slots (never used). In the compiled HLO, XLA's CPU backend
    copies the whole donated cache twice per step when the step runs all of its rows (or a single one), but copies
    only the leading rows a step takes and writes them back in place otherwise; the spare row keeps every step of a
    batched server in the second case."""
    return max_batch + 1 if max_batch > 1 else 1


def bucket_for(length: int, buckets: tuple[int, ...]) -> int:
    return next(width for width in buckets if width >= length)


def slot_axis(cache: KVCache) -> int:
    """Axis of the slot (batch) dimension in the cache's k/v leaves: 0 for per-layer buffers, 1 when stacked."""
    return 0 if isinstance(cache.k_LBGSK, tuple) else 1


def empty_cache(model: Transformer, rows: int, width: int, per_layer: bool) -> KVCache:
    """A zeroed cache of `rows` × `width`; per-layer k/v buffers (updated in place) unless the layers are scanned."""
    cache = init_cache(model.cfg, rows, width)
    if per_layer:
        cache = cache._replace(k_LBGSK=tuple(cache.k_LBGSK), v_LBGSK=tuple(cache.v_LBGSK))
    return cache


def sample_rows(logits_BV: jax.Array, keys_B2: jax.Array, temperature_B: jax.Array, top_p_B: jax.Array):
    """Next token per row under that row's own settings and PRNG key: greedy where temperature is 0, else
    temperature with nucleus (top-p) filtering. Returns (tokens [B], advanced keys [B, 2]).

    The sampling and the nucleus filter's vocabulary sort (~100 ms for 8 rows of 50k on 2 CPU cores) run only when
    some row needs them."""
    logits_BV = logits_BV.astype(jnp.float32)
    keys_B22 = jax.vmap(jax.random.split)(keys_B2)
    greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)

    def sampled(logits_BV):
        scaled_BV = logits_BV / jnp.where(temperature_B > 0, temperature_B, 1.0)[:, None]
        nucleus = (top_p_B < 1.0)[:, None]
        scaled_BV = jax.lax.cond(jnp.any(nucleus),
                                 lambda x: jnp.where(nucleus, top_p_filter(x, top_p_B[:, None]), x),
                                 lambda x: x, scaled_BV)
        drawn_B = jax.vmap(jax.random.categorical)(keys_B22[:, 1], scaled_BV).astype(jnp.int32)
        return jnp.where(temperature_B > 0, drawn_B, greedy_B)

    tokens_B = jax.lax.cond(jnp.any(temperature_B > 0), sampled, lambda _: greedy_B, logits_BV)
    return tokens_B, keys_B22[:, 0]


def top_logprobs(logprobs_XV: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The TOP_LOGPROBS largest log-probs [..., k] and their ids."""
    return jax.lax.top_k(logprobs_XV, TOP_LOGPROBS)


def _behind_pointer(row: KVCache, length, pointer, context: int) -> KVCache:
    """A prefilled one-row cache (its prompt in columns [0, length)) widened to `context` columns and rotated so the
    prompt ends just behind the ring's write pointer: columns [pointer - length, pointer) mod context."""
    shift = (pointer - length) % context

    def place(x, axis):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, context - x.shape[axis])
        return jnp.roll(jnp.pad(x, pad), shift, axis=axis)

    kv_columns = 3 if not isinstance(row.k_LBGSK, tuple) else 2
    return KVCache(jax.tree.map(lambda x: place(x, kv_columns), row.k_LBGSK),
                   jax.tree.map(lambda x: place(x, kv_columns), row.v_LBGSK),
                   place(row.pos_BS, 1), place(row.seg_BS, 1), row.index)


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def prefill_slot(params, cache: KVCache, slot, tokens_P, length, key_2, temperature, top_p, *, model: Transformer):
    """Runs one prompt (right-padded to its bucket, `length` real tokens) through the model and writes it into slot
    `slot` of the cache, replacing everything the slot held; samples the first new token.

    Returns (cache, first token, its logprob, its top alternatives, the prompt tokens' logprobs [P - 1], their top
    alternatives, the slot's advanced key)."""
    width = tokens_P.shape[0]
    context = cache.pos_BS.shape[1]
    kv = slot_axis(cache)
    row = empty_cache(model, 1, width, per_layer=kv == 0)
    index_P = jnp.arange(width, dtype=jnp.int32)
    segments_P = (index_P < length).astype(jnp.int32)
    logits_1PV, row = model.apply({"params": params}, tokens_P[None], index_P[None], segments_P[None], cache=row)
    row = _behind_pointer(row, length, cache.index, context)

    def write(big, small, axis):
        starts = [0] * big.ndim
        starts[axis] = slot
        return jax.lax.dynamic_update_slice(big, small.astype(big.dtype), starts)

    cache = KVCache(jax.tree.map(lambda b, r: write(b, r, kv), cache.k_LBGSK, row.k_LBGSK),
                    jax.tree.map(lambda b, r: write(b, r, kv), cache.v_LBGSK, row.v_LBGSK),
                    write(cache.pos_BS, row.pos_BS, 0), write(cache.seg_BS, row.seg_BS, 0), cache.index)
    logprobs_PV = jax.nn.log_softmax(logits_1PV[0].astype(jnp.float32), axis=-1)
    prompt_lp_P = jnp.take_along_axis(logprobs_PV[:-1], tokens_P[1:, None], axis=-1)[:, 0]
    prompt_top = top_logprobs(logprobs_PV[:-1])
    last_lp_V = jax.lax.dynamic_index_in_dim(logprobs_PV, length - 1, keepdims=False)
    last_logits_1V = jax.lax.dynamic_index_in_dim(logits_1PV[0], length - 1, keepdims=True)
    first_1, keys_12 = sample_rows(last_logits_1V, key_2[None], temperature[None], top_p[None])
    return (cache, first_1[0], last_lp_V[first_1[0]], top_logprobs(last_lp_V), prompt_lp_P, prompt_top, keys_12[0])


def _first_slots(cache: KVCache, rows: int) -> KVCache:
    """The cache of slots [0, rows)."""
    def take(axis):
        return lambda x: jax.lax.slice_in_dim(x, 0, rows, axis=axis)

    kv = slot_axis(cache)
    return KVCache(jax.tree.map(take(kv), cache.k_LBGSK), jax.tree.map(take(kv), cache.v_LBGSK),
                   take(0)(cache.pos_BS), take(0)(cache.seg_BS), cache.index)


def _put_first_slots(cache: KVCache, first: KVCache) -> KVCache:
    put = lambda big, small: jax.lax.dynamic_update_slice(big, small, (0,) * big.ndim)
    return KVCache(jax.tree.map(put, cache.k_LBGSK, first.k_LBGSK), jax.tree.map(put, cache.v_LBGSK, first.v_LBGSK),
                   put(cache.pos_BS, first.pos_BS), put(cache.seg_BS, first.seg_BS), first.index)


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def decode_step(params, cache: KVCache, last_R, pos_R, active_R, keys_R2, temperature_R, top_p_R, *,
                model: Transformer):
    """Feeds the last token of each of the first R slots (R = len(last_R); the slots past them are free) at that
    slot's own position `pos_R` and samples the next: (cache, tokens [R], their logprobs [R], top alternatives
    ([R, k] logprobs, [R, k] ids), advanced keys [R, 2]).

    Every slot writes column `cache.index` (the ring's write pointer, then advanced mod the context); an inactive
    slot writes it as segment 0, which no query reads."""
    rows = last_R.shape[0]
    full = rows == cache.pos_BS.shape[0]
    live = cache if full else _first_slots(cache, rows)
    logits_R1V, live = model.apply({"params": params}, last_R[:, None], pos_R[:, None],
                                   active_R[:, None].astype(jnp.int32), cache=live)
    live = live._replace(index=live.index % cache.pos_BS.shape[1])
    cache = live if full else _put_first_slots(cache, live)
    logits_BV = logits_R1V[:, 0]
    next_B, keys_B2 = sample_rows(logits_BV, keys_R2, temperature_R, top_p_R)
    logprobs_BV = jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1)
    chosen_B = jnp.take_along_axis(logprobs_BV, next_B[:, None], axis=-1)[:, 0]
    return cache, next_B, chosen_B, top_logprobs(logprobs_BV), keys_B2


def _pairs(values_K, ids_K) -> list[tuple[int, float]]:
    return [(int(i), float(v)) for v, i in zip(values_K, ids_K)]


class Engine:
    """The slots, the waiting queue and the thread that runs them. `submit` from any thread; events come back
    through each request's `on_event` in the engine's thread."""

    def __init__(self, model: Transformer, params, max_batch: int, max_context: int, max_queue: int):
        self.model, self.params = model, params
        self.max_batch, self.max_context, self.max_queue = max_batch, max_context, max_queue
        self.buckets = prefill_buckets(max_context)
        self.row_buckets = decode_row_buckets(max_batch)
        self.cache = empty_cache(model, cache_rows(max_batch), max_context, per_layer=not model.cfg.scan_layers)
        self.slots: list[Request | None] = [None] * max_batch
        self.last_B = np.zeros((max_batch,), np.int32)
        self.pos_B = np.zeros((max_batch,), np.int32)  # the position each slot's last token is fed at
        self.keys_B2 = np.zeros((max_batch, 2), np.uint32)
        self.temperature_B = np.zeros((max_batch,), np.float32)
        self.top_p_B = np.ones((max_batch,), np.float32)
        self.waiting: collections.deque[Request] = collections.deque()
        self.admitting: list[Request] = []  # taken from the queue, being prefilled
        self.condition = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.steps = 0

    # ---- any thread ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="gptjax-serve-engine", daemon=True)
        self.thread.start()

    def submit(self, requests: list[Request]) -> None:
        """Queues `requests` together, or none of them: QueueFull when they would exceed the queue's bound,
        EngineStopped once shutdown has begun."""
        with self.condition:
            if self.stopping:
                raise EngineStopped("the server is shutting down")
            if len(self.waiting) + len(requests) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting for one of {self.max_batch} slots "
                                f"(queue bound {self.max_queue})")
            self.waiting.extend(requests)
            self.condition.notify()

    def load(self) -> dict:
        """How busy the engine is: active slots, waiting requests, decode steps run."""
        return {"active": sum(s is not None for s in self.slots), "waiting": len(self.waiting),
                "max_batch": self.max_batch, "steps": self.steps}

    def stop(self, timeout: float | None = None) -> None:
        """Stops taking requests; waits up to `timeout` seconds (None: until done) for the queued and running ones
        to finish, then cancels what is left (its FinishEvent says "cancelled") and ends the thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.condition:
            self.stopping = True
            self.condition.notify()
            while self._busy() and (deadline is None or time.monotonic() < deadline):
                self.condition.wait(0.05 if deadline is None else max(min(deadline - time.monotonic(), 0.05), 0))
            for request in [*self.admitting, *self.waiting, *(s for s in self.slots if s is not None)]:
                request.cancel()
            self.condition.notify()
        if self.thread is not None:
            self.thread.join()

    def warm_up(self) -> None:
        """Compiles the decode step and every prefill bucket before the first request (the cache is unchanged for
        requests: each prefill rewrites its slot)."""
        for width in self.buckets:
            self._prefill_call(0, np.zeros((width,), np.int32), 1, Sampling())
        for rows in self.row_buckets:
            self._decode_call(np.zeros((rows,), bool))

    # ---- the engine thread ---------------------------------------------------------------------------------------

    def _busy(self) -> bool:
        return bool(self.waiting or self.admitting) or any(s is not None for s in self.slots)

    def _run(self) -> None:
        try:
            self._serve_until_stopped()
        except Exception:  # a failed step must not leave clients waiting forever
            log.exception("serve engine failed; ending every request")
            with self.condition:
                self.stopping = True
                failed = [*self.admitting, *self.waiting, *(s for s in self.slots if s is not None)]
                self.waiting.clear()
                self.slots = [None] * self.max_batch
                self.condition.notify_all()
            for request in failed:
                request.on_event(FinishEvent("error"))

    def _serve_until_stopped(self) -> None:
        while True:
            with self.condition:
                while not self._busy() and not self.stopping:
                    self.condition.wait()
                if self.stopping and not self._busy():
                    self.condition.notify_all()
                    return
                self.admitting = [self.waiting.popleft() for slot in range(self.max_batch)
                                  if self.slots[slot] is None and self.waiting]
            free = [slot for slot in range(self.max_batch) if self.slots[slot] is None]
            while self.admitting:
                self._admit(free.pop(0), self.admitting[0])
                self.admitting.pop(0)
            self._drop_cancelled()
            if any(s is not None for s in self.slots):
                self._decode()
            with self.condition:
                self.condition.notify_all()

    def _prefill_call(self, slot: int, tokens_P: np.ndarray, length: int, sampling: Sampling):
        key_2 = np.asarray(jax.random.PRNGKey(sampling.seed), np.uint32)
        out = prefill_slot(self.params, self.cache, np.int32(slot), tokens_P, np.int32(length), key_2,
                           np.float32(sampling.temperature), np.float32(sampling.top_p), model=self.model)
        self.cache = out[0]
        return jax.device_get(out[1:])

    def _admit(self, slot: int, request: Request) -> None:
        if request.cancelled:
            request.on_event(FinishEvent("cancelled"))
            return
        length = len(request.prompt_ids)
        tokens_P = np.zeros((bucket_for(length, self.buckets),), np.int32)
        tokens_P[:length] = request.prompt_ids
        first, first_lp, (top_v, top_i), prompt_lp, (prompt_top_v, prompt_top_i), key_2 = self._prefill_call(
            slot, tokens_P, length, request.sampling)
        if request.score_prompt:
            request.on_event(PromptEvent([float(v) for v in prompt_lp[: length - 1]],
                                         [_pairs(v, i) for v, i in zip(prompt_top_v[: length - 1],
                                                                       prompt_top_i[: length - 1])]))
        if request.max_tokens == 0:
            request.on_event(FinishEvent("length"))
            return
        self.slots[slot] = request
        self.pos_B[slot] = length
        self.keys_B2[slot] = key_2
        self.temperature_B[slot] = request.sampling.temperature
        self.top_p_B[slot] = request.sampling.top_p
        self._emit(slot, int(first), float(first_lp), _pairs(top_v, top_i))

    def _emit(self, slot: int, token: int, logprob: float, top: list[tuple[int, float]]) -> None:
        """Hands a slot's new token to its request; frees the slot when the request is finished."""
        request = self.slots[slot]
        request.produced += 1
        self.last_B[slot] = token
        request.on_event(TokenEvent(token, logprob, top))
        reason = "stop" if token in request.stop_ids else "length" if request.produced >= request.max_tokens else None
        if reason is not None:
            request.on_event(FinishEvent(reason))
            self.slots[slot] = None

    def _drop_cancelled(self) -> None:
        for slot, request in enumerate(self.slots):
            if request is not None and request.cancelled:
                request.on_event(FinishEvent("cancelled"))
                self.slots[slot] = None

    def _decode_call(self, active_R: np.ndarray):
        """One decode step over the first len(active_R) slots."""
        rows = len(active_R)
        out = decode_step(self.params, self.cache, self.last_B[:rows], self.pos_B[:rows], active_R,
                          self.keys_B2[:rows], self.temperature_B[:rows], self.top_p_B[:rows], model=self.model)
        self.cache = out[0]
        return jax.device_get(out[1:])

    def _decode(self) -> None:
        """A decode step over the fewest leading slots (a bucket) holding every active request."""
        active_B = np.array([s is not None for s in self.slots])
        rows = bucket_for(int(np.flatnonzero(active_B)[-1]) + 1, self.row_buckets)
        next_R, logprob_R, (top_v_RK, top_i_RK), keys_R2 = self._decode_call(active_B[:rows])
        self.steps += 1
        self.keys_B2[:rows] = keys_R2
        self.pos_B += active_B
        for slot in np.flatnonzero(active_B):
            self._emit(int(slot), int(next_R[slot]), float(logprob_R[slot]), _pairs(top_v_RK[slot], top_i_RK[slot]))
