"""The scoring engine behind lm-eval's three request kinds: loglikelihood, loglikelihood_rolling, generate_until.

Definitions follow lm-evaluation-harness 0.4.x's HF backend (`lm_eval/api/model.py` TemplateLM.loglikelihood and
_encode_pair, `lm_eval/models/huggingface.py` _loglikelihood_tokens / loglikelihood_rolling / generate_until,
`lm_eval/utils.py` get_rolling_token_windows + make_disjoint_window, `lm_eval/models/utils.py` stop handling), so
scores equal `HFLM`'s on the same weights. Speed comes from batching and few compiled shapes:

- every request becomes one input row `(context + continuation)[-(max_len + 1):][:-1]`; a row that is a prefix of
  another row is not run at all, its scores are read from the longer row (identical (context, continuation) pairs,
  MMLU's one-token answers " A".." D" after one context, a continuation that extends another);
- rows that share a token prefix before their first queries run as stem + tail: each stem once into a KV cache,
  every row's tail on it (a multiple-choice context shared by its endings; a few-shot prefix, e.g. MMLU's subject
  header and dev examples, shared by a task's questions). Groups are chosen on the rows' tokens (after any left
  truncation), to run the fewest tokens (`group_rows`), so sharing is exact; tails are batched over a stem's cache,
  their widths bucketed from 8;
- rows run longest first (lm-eval's Collator order) in batches of `batch_size`, right-padded to a width bucket
  (`bucket_width`) and, for a last partial batch, to a power-of-two row count, so only a handful of shapes compile;
- one jitted call per batch (plus one per batch of stems) returns just the queried log-probs and greedy flags: the
  model returns hidden states, the output projection, logsumexp and argmax run on the queried positions only (no
  [B, T, V] logits). `LM.token_logprobs` / `LM.score` score through the same engine.
"""
from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from gptjax.errors import GptjaxError
from gptjax.model.attention import KVCache, init_cache
from gptjax.model.transformer import Transformer, head_logits, head_matrix

TokenPair = tuple[Sequence[int], Sequence[int]]  # (context ids, continuation ids)
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HFLM.max_gen_toks
MIN_WIDTH = 32
MIN_TAIL_WIDTH = 8  # endings after a shared context are short: 8, 12, 16, 24, 32, ...
STEM_OVERHEAD = 16  # tokens a separate stem run is charged when choosing groups (one more call, padding)


class LoglikelihoodResults(list):
    """(sum of log p(continuation | context), is_greedy) per request, in input order, with batch statistics:
    `n_truncated` requests whose context was cut from the left to fit the model, `n_rows` forward rows run
    (≤ requests: rows that are prefixes of others are shared), `n_stems` shared prefixes run once into a KV cache
    for the rows after them, `shapes` the batch shapes used: (rows, width, queries), or (stems, stem width, rows,
    tail width, queries) for rows run on a shared stem."""

    def __init__(self, scores=(), n_truncated: int = 0, n_rows: int = 0, shapes: frozenset = frozenset(),
                 n_stems: int = 0):
        super().__init__(scores)
        self.n_truncated = n_truncated
        self.n_rows = n_rows
        self.shapes = shapes
        self.n_stems = n_stems


def _widths(minimum: int = MIN_WIDTH) -> Iterator[int]:
    """32, 48, 64, 96, 128, 192, ...: powers of two and their 1.5x midpoints (at most 1/3 of a row is padding)."""
    power = minimum
    while True:
        yield power
        yield power * 3 // 2
        power *= 2


def bucket_width(n_tokens: int, limit: int, minimum: int = MIN_WIDTH) -> int:
    """The padded row width for `n_tokens`, capped at `limit`: a block of 256 compiles at most 7 widths, 1024 at
    most 11, 2048 at most 13 (from `minimum` = 32; tails after a shared context start at MIN_TAIL_WIDTH)."""
    return min(next(w for w in _widths(minimum) if w >= n_tokens), limit)


def bucket_rows(n_rows: int, batch_size: int) -> int:
    """Rows of a batch holding `n_rows` requests: `batch_size`, or for a last partial batch the next power of two."""
    return min(batch_size, 1 << max(n_rows - 1, 0).bit_length())


def bucket_queries(n_queries: int, n_rows: int) -> int:
    """Query slots of a batch: the next power of two ≥ n_queries and ≥ n_rows."""
    return 1 << (max(n_queries, n_rows) - 1).bit_length()


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str,
                prefix_id: int) -> tuple[list[int], list[int]]:
    """Context and continuation ids as lm-eval's causal HF backend makes them (TemplateLM.loglikelihood).

    Trailing whitespace of the context moves to the continuation; the continuation is the whole encoding minus the
    context encoding's length (so merges across the boundary land in the continuation). An empty context becomes
    [prefix_id], unless the continuation itself starts with that token, which then serves as the context."""
    if not context:
        continuation_ids = encode(continuation)
        if continuation_ids and continuation_ids[0] == prefix_id:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix_id], continuation_ids
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    context_ids = encode(context)
    return context_ids, encode(context + continuation)[len(context_ids):]


def rolling_windows(token_ids: Sequence[int], prefix_id: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint (context, continuation) windows that score every token of a document exactly once, each window at
    most `max_len` inputs long: lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window.

    The first window predicts up to max_len tokens after `prefix_id`; each later one predicts the next max_len
    tokens from the one token before them — except the last, which predicts what is left with as much of the
    preceding text as fits as context."""
    token_ids = list(token_ids)
    if not token_ids:
        return []
    first = token_ids[:max_len]
    windows = [([prefix_id], first)]
    done = len(first)
    while done < len(token_ids):
        end = min(done + max_len, len(token_ids))
        predicted = token_ids[done:end]
        context_start = max(end - max_len - 1, 0)
        windows.append((token_ids[context_start:done], predicted))
        done = end
    return windows


@dataclass
class _Row:
    """One forward row and the requests scored from it."""
    tokens: tuple[int, ...]
    queries: list[tuple[int, int, list[int]]] = field(default_factory=list)  # (request, first position, targets)


def plan_rows(pairs: Sequence[TokenPair], max_len: int) -> tuple[list[_Row], int]:
    """Forward rows for scoring `pairs` (longest first, ties by tokens like lm-eval's Collator) and the count of
    truncated requests. A request's row is its last max_len + 1 tokens minus the final one; a row that is a prefix
    of another row is folded into it (under causal attention its logits are the longer row's first logits)."""
    inputs: list[tuple[int, ...]] = []
    n_truncated = 0
    for i, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise GptjaxError(f"request {i} has an empty {'context' if not context else 'continuation'} "
                              f"(token pairs need both; text requests with an empty context get <|endoftext|>)")
        if len(continuation) > max_len:
            raise GptjaxError(f"request {i}: continuation of {len(continuation)} tokens exceeds the model's "
                              f"{max_len}-token window; shorten it or score it with loglikelihood_rolling")
        whole = list(context) + list(continuation)
        n_truncated += len(whole) > max_len + 1
        inputs.append(tuple(whole[-(max_len + 1):][:-1]))
    order = sorted(range(len(inputs)), key=lambda i: inputs[i])
    host_of = {}
    for rank in range(len(order) - 1, -1, -1):
        i = order[rank]
        # in sorted order a sequence that is a prefix of any other is a prefix of its successor
        successor = order[rank + 1] if rank + 1 < len(order) else None
        is_prefix = successor is not None and inputs[successor][: len(inputs[i])] == inputs[i]
        host_of[i] = host_of[successor] if is_prefix else i
    rows: dict[int, _Row] = {}
    for i, (_, continuation) in enumerate(pairs):
        host = host_of[i]
        row = rows.setdefault(host, _Row(inputs[host]))
        row.queries.append((i, len(inputs[i]) - len(continuation), list(continuation)))
    ordered = sorted(rows.values(), key=lambda r: (-len(r.tokens), r.tokens))
    return ordered, n_truncated


def target_logprobs(params, hidden_QD, targets_Q, cfg) -> tuple[jax.Array, jax.Array]:
    """log p(target) and whether the target is the argmax, from the final-normed hidden state before each target:
    the output projection runs on these Q states only, never on a [rows, width, vocab] tensor."""
    logits_QV = head_logits(hidden_QD, head_matrix(params, cfg), cfg)
    logprob_Q = jnp.take_along_axis(logits_QV, targets_Q[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(logits_QV, -1)
    return logprob_Q, jnp.argmax(logits_QV, axis=-1) == targets_Q


@functools.partial(jax.jit, static_argnames=("model",))
def query_logprobs(params, tokens_RW, rows_Q, positions_Q, targets_Q, *, model: Transformer):
    """log p(targets_Q | row prefix up to positions_Q) and whether each target is the argmax there, for Q queries
    into one batch of rows (padding queries point at (0, 0, 0) and are dropped by the caller)."""
    hidden_RWD = model.apply({"params": params}, tokens_RW, return_hidden=True)
    return target_logprobs(params, hidden_RWD[rows_Q, positions_Q], targets_Q, model.cfg)


def _batch_arrays(rows: Sequence[_Row], n_rows: int, width: int) -> tuple[np.ndarray, ...]:
    """Tokens [n_rows, width] and flat queries (row, position, target) padded to a power of two (≥ n_rows)."""
    tokens_RW = np.zeros((n_rows, width), np.int32)
    n_queries = sum(len(targets) for row in rows for _, _, targets in row.queries)
    rows_Q = np.zeros((bucket_queries(n_queries, n_rows),), np.int32)
    positions_Q, targets_Q = np.zeros_like(rows_Q), np.zeros_like(rows_Q)
    q = 0
    for r, row in enumerate(rows):
        tokens_RW[r, : len(row.tokens)] = row.tokens
        for _, start, targets in row.queries:
            n = len(targets)
            rows_Q[q: q + n] = r
            positions_Q[q: q + n] = np.arange(start, start + n)
            targets_Q[q: q + n] = targets
            q += n
    return tokens_RW, rows_Q, positions_Q, targets_Q


def query_start(row: _Row) -> int:
    """The row's first queried position: the tokens before it may come from a shared stem's KV cache."""
    return min(start for _, start, _ in row.queries)


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the longest common prefix of a and b, at most `limit`."""
    n = min(len(a), len(b), limit)
    return next((i for i in range(n) if a[i] != b[i]), n)


def best_groups(lengths: Sequence[int], shared: Sequence[int], overhead: int = STEM_OVERHEAD
                ) -> list[tuple[int, int, int]]:
    """(first, last, stem length) of the runs of consecutive sorted rows to score as one stem + tails, chosen to
    run the fewest tokens: a row alone costs its length, a group its stem once (plus `overhead`) and each row's
    tokens after the stem. `shared[i]` is the prefix rows i and i + 1 may share. Exact over the tree of shared-
    prefix intervals (an interval's stem is the least `shared` inside it); rows in no group run whole."""
    if not lengths:
        return []
    ends = np.concatenate([[0], np.cumsum(lengths)])
    solved: dict[tuple[int, int], tuple[int, list[tuple[int, int, int]]]] = {}
    stack = [(0, len(lengths) - 1)]
    while stack:  # post-order over the interval tree, without recursion (it can be deep)
        lo, hi = stack[-1]
        if lo == hi:
            solved[lo, hi] = (lengths[lo], [])
            stack.pop()
            continue
        stem = min(shared[lo:hi])
        cuts = [j for j in range(lo, hi) if shared[j] == stem]
        children = list(zip([lo] + [j + 1 for j in cuts], cuts + [hi]))
        pending = [child for child in children if child not in solved]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        split_cost = sum(solved[child][0] for child in children)
        whole_cost = overhead + stem + int(ends[hi + 1] - ends[lo]) - (hi - lo + 1) * stem
        if stem and whole_cost < split_cost:
            solved[lo, hi] = (whole_cost, [(lo, hi, stem)])
        else:
            solved[lo, hi] = (split_cost, [group for child in children for group in solved[child][1]])
        for child in children:
            del solved[child]
    return solved[0, len(lengths) - 1][1]


@dataclass(frozen=True)
class _Group:
    """Rows that share `stem`, the tokens before their first queries: the stem runs once into a KV cache."""
    stem: tuple[int, ...]
    rows: list[_Row]


def group_rows(rows: Sequence[_Row]) -> tuple[list[_Row], list[_Group]]:
    """Rows to run whole (longest first), and groups of rows sharing a token prefix before their first query
    (longest stem first; in a group, longest row first): a multiple-choice context shared by its endings, a
    few-shot prefix shared by a task's questions. Prefixes are compared on the rows' tokens, after any left
    truncation, so a stem is exact: the same tokens at the same positions."""
    order = sorted(rows, key=lambda r: r.tokens)
    shared = [common_prefix(a.tokens, b.tokens, min(query_start(a), query_start(b))) for a, b in zip(order, order[1:])]
    groups = [_Group(order[lo].tokens[:stem], sorted(order[lo: hi + 1], key=lambda r: (-len(r.tokens), r.tokens)))
              for lo, hi, stem in best_groups([len(row.tokens) for row in order], shared)]
    grouped = {id(row) for group in groups for row in group.rows}
    plain = [row for row in order if id(row) not in grouped]
    return (sorted(plain, key=lambda r: (-len(r.tokens), r.tokens)),
            sorted(groups, key=lambda g: (-len(g.stem), g.stem)))


def tail_row(stem: Sequence[int], row: _Row) -> _Row:
    """`row` after its stem, query positions counted from the stem's end."""
    return _Row(row.tokens[len(stem):], [(i, start - len(stem), targets) for i, start, targets in row.queries])


@functools.partial(jax.jit, static_argnames=("model",))
def stem_cache(params, stem_tokens_SC, stem_len_S, *, model: Transformer) -> KVCache:
    """The KV cache of each stem, right-padded (padding slots carry segment 0, so real tokens never attend to them)."""
    n_stems, stem_width = stem_tokens_SC.shape
    stem_seg_SC = (jnp.arange(stem_width) < stem_len_S[:, None]).astype(jnp.int32)
    _, cache = model.apply({"params": params}, stem_tokens_SC, segment_ids_BT=stem_seg_SC, return_hidden=True,
                           cache=init_cache(model.cfg, n_stems, stem_width))
    return cache


@functools.partial(jax.jit, static_argnames=("model",))
def tail_logprobs(params, cache: KVCache, stem_len_S, stem_of_R, tail_tokens_RT, tail_len_R, rows_Q, positions_Q,
                  targets_Q, *, model: Transformer):
    """query_logprobs for rows = stem + tail: each tail runs on a copy of its stem's cache, with room for it."""
    cfg = model.cfg
    tail_width = tail_tokens_RT.shape[1]
    kv_pad, slot_pad = ((0, 0),) * 3 + ((0, tail_width), (0, 0)), ((0, 0), (0, tail_width))
    row_cache = KVCache(jnp.pad(cache.k_LBGSK[:, stem_of_R], kv_pad), jnp.pad(cache.v_LBGSK[:, stem_of_R], kv_pad),
                        jnp.pad(cache.pos_BS[stem_of_R], slot_pad), jnp.pad(cache.seg_BS[stem_of_R], slot_pad),
                        cache.index)
    # padding positions past the table are clipped (they are masked anyway; an out-of-range gather would be NaN)
    tail_pos_RT = jnp.minimum(stem_len_S[stem_of_R][:, None] + jnp.arange(tail_width), cfg.position_limit - 1)
    tail_seg_RT = (jnp.arange(tail_width) < tail_len_R[:, None]).astype(jnp.int32)
    hidden_RTD, _ = model.apply({"params": params}, tail_tokens_RT, positions_BT=tail_pos_RT,
                                segment_ids_BT=tail_seg_RT, cache=row_cache, return_hidden=True)
    return target_logprobs(params, hidden_RTD[rows_Q, positions_Q], targets_Q, cfg)


Batch = tuple[list[_Row], np.ndarray, np.ndarray, tuple[int, ...]]  # rows, logprob_Q, greedy_Q, shape


def _plain_batches(model: Transformer, params, rows: Sequence[_Row], max_len: int, batch_size: int
                   ) -> Iterator[Batch]:
    for start in range(0, len(rows), batch_size):
        batch = rows[start: start + batch_size]
        arrays = _batch_arrays(batch, bucket_rows(len(batch), batch_size), bucket_width(len(batch[0].tokens), max_len))
        yield batch, *map(np.asarray, query_logprobs(params, *arrays, model=model)), arrays[0].shape + arrays[1].shape


def stem_batches(groups: Sequence[_Group], batch_size: int) -> Iterator[list[_Group]]:
    """Consecutive groups whose rows fit one batch (a larger group goes alone): each stem runs once, however many
    tail batches its rows fill."""
    batch: list[_Group] = []
    for group in groups:
        if batch and sum(len(g.rows) for g in batch) + len(group.rows) > batch_size:
            yield batch
            batch = []
        batch.append(group)
    if batch:
        yield batch


def _stem_arrays(stems: Sequence[tuple[int, ...]], batch_size: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Stems [S, C], padded as rows are (longest first), and their lengths [S]."""
    stem_tokens_SC = np.zeros((bucket_rows(len(stems), batch_size), bucket_width(len(stems[0]), max_len)), np.int32)
    stem_len_S = np.zeros(len(stem_tokens_SC), np.int32)
    for s, stem in enumerate(stems):
        stem_tokens_SC[s, : len(stem)], stem_len_S[s] = stem, len(stem)
    return stem_tokens_SC, stem_len_S


def _shared_batches(model: Transformer, params, groups: Sequence[_Group], max_len: int, batch_size: int
                    ) -> Iterator[Batch]:
    for stem_batch in stem_batches(groups, batch_size):
        stem_tokens_SC, stem_len_S = _stem_arrays([g.stem for g in stem_batch], batch_size, max_len)
        cache = stem_cache(params, stem_tokens_SC, stem_len_S, model=model)
        members = [(s, row) for s, group in enumerate(stem_batch) for row in group.rows]
        for start in range(0, len(members), batch_size):
            batch = members[start: start + batch_size]
            tails = [tail_row(stem_batch[s].stem, row) for s, row in batch]
            stem_of_R, tail_len_R = np.zeros((2, bucket_rows(len(batch), batch_size)), np.int32)
            stem_of_R[: len(batch)] = [s for s, _ in batch]
            tail_len_R[: len(batch)] = [len(tail.tokens) for tail in tails]
            tail_tokens_RT, *queries = _batch_arrays(tails, len(stem_of_R),
                                                     bucket_width(max(tail_len_R), max_len, MIN_TAIL_WIDTH))
            out = tail_logprobs(params, cache, stem_len_S, stem_of_R, tail_tokens_RT, tail_len_R, *queries,
                                model=model)
            yield ([row for _, row in batch], *map(np.asarray, out),
                   stem_tokens_SC.shape + tail_tokens_RT.shape + queries[0].shape)


TokenScores = tuple[np.ndarray, np.ndarray]  # per continuation token: log p (float32), is it the argmax


def score_tokens(model: Transformer, params, pairs: Sequence[TokenPair], max_len: int, batch_size: int = 32,
                 progress: bool = False, share_stems: bool = True) -> tuple[list[TokenScores], LoglikelihoodResults]:
    """Per-token log p(continuation | context) and greedy flags per (context ids, continuation ids), in input order,
    and the batch statistics (a LoglikelihoodResults without scores). share_stems=False runs every row whole (no
    KV-cache reuse of shared prefixes)."""
    if batch_size < 1:
        raise GptjaxError(f"batch_size={batch_size} must be >= 1")
    rows, n_truncated = plan_rows(pairs, max_len)
    plain, groups = group_rows(rows) if share_stems else (rows, [])
    scores: list[TokenScores | None] = [None] * len(pairs)
    shapes = set()
    bar = tqdm(total=len(pairs), desc="loglikelihood", unit="req", disable=not progress)
    batches = itertools.chain(_shared_batches(model, params, groups, max_len, batch_size),
                              _plain_batches(model, params, plain, max_len, batch_size))
    for batch, logprob_Q, greedy_Q, shape in batches:
        shapes.add(shape)
        q = 0
        for row in batch:
            for request, _, targets in row.queries:
                scores[request] = (logprob_Q[q: q + len(targets)], greedy_Q[q: q + len(targets)])
                q += len(targets)
            bar.update(len(row.queries))
    bar.close()
    return scores, LoglikelihoodResults((), n_truncated, len(rows), frozenset(shapes), len(groups))


def score_pairs(model: Transformer, params, pairs: Sequence[TokenPair], max_len: int, batch_size: int = 32,
                progress: bool = False, share_stems: bool = True) -> LoglikelihoodResults:
    """(sum log p(continuation | context), is_greedy) per (context ids, continuation ids), in input order
    (`score_tokens` summed)."""
    scores, stats = score_tokens(model, params, pairs, max_len, batch_size, progress, share_stems)
    # float64: a float32 running sum near -600 is off by several ulps (lm-eval cross-check)
    return LoglikelihoodResults([(float(logprob_N.sum(dtype=np.float64)), bool(greedy_N.all()))
                                 for logprob_N, greedy_N in scores], stats.n_truncated, stats.n_rows, stats.shapes,
                                stats.n_stems)


def sum_rolling(scores: Sequence[tuple[float, bool]], windows_per_doc: Sequence[int]) -> list[float]:
    """Per-document sums of window log-likelihoods (windows listed document after document)."""
    totals, at = [], 0
    for n in windows_per_doc:
        totals.append(float(sum(s for s, _ in scores[at: at + n])))
        at += n
    return totals


@dataclass(frozen=True)
class GenerationSettings:
    """One request group's generation settings, normalized as lm-eval's normalize_gen_kwargs does."""
    until: tuple[str, ...]
    max_gen_toks: int
    temperature: float  # 0 = greedy
    top_k: int
    top_p: float
    seed: int


def generation_settings(gen_kwargs: dict, eot_text: str, default_max_gen_toks: int = DEFAULT_MAX_GEN_TOKS
                        ) -> GenerationSettings:
    """`until` (str or list; the end-of-text string is always added), `max_gen_toks` (or its aliases
    max_new_tokens / max_tokens / max_completion_tokens), greedy unless do_sample with a temperature > 0."""
    kwargs = copy.deepcopy(dict(gen_kwargs))
    until = kwargs.pop("until", None)
    until = [] if until is None else [until] if isinstance(until, str) else list(until)
    if eot_text not in until:
        until.append(eot_text)
    max_gen_toks = next((kwargs.pop(k) for k in ("max_gen_toks", "max_new_tokens", "max_tokens",
                                                  "max_completion_tokens") if kwargs.get(k) is not None),
                        default_max_gen_toks)
    temperature = float(kwargs.get("temperature", 0.0) or 0.0)
    if kwargs.get("do_sample") is False:
        temperature = 0.0
    return GenerationSettings(tuple(until), int(max_gen_toks), temperature, int(kwargs.get("top_k", 0) or 0),
                              float(kwargs.get("top_p", 1.0) or 1.0), int(kwargs.get("seed", 0) or 0))


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of any (non-empty) stop string."""
    cut = len(text)
    for stop in stops:
        if stop:
            found = text.find(stop)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]


def group_by_settings(settings: Sequence[GenerationSettings]) -> Iterator[tuple[GenerationSettings, list[int]]]:
    """Request indices per distinct settings, in order of first appearance."""
    groups: dict[GenerationSettings, list[int]] = {}
    for i, s in enumerate(settings):
        groups.setdefault(s, []).append(i)
    yield from groups.items()


class _AllStopped(Exception):
    """Raised from the per-chunk callback once every row of a batch has produced a stop string."""


def generate_batch_until(generate_ids: Callable[..., list[list[int]]], decode: Callable[[list[int]], str],
                         prompts: Sequence[list[int]], settings: GenerationSettings, chunk: int = 16
                         ) -> list[str]:
    """Continuations of `prompts` (one batch, one settings) cut at the first stop string; decoding stops early
    once every row has a stop string or has ended with end-of-text."""
    new_ids: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)

    def on_chunk(chunk_ids: list[list[int]]) -> None:
        for row, ids in enumerate(chunk_ids):
            new_ids[row].extend(ids)
            ended = len(ids) < chunk  # generate_ids drops the end-of-text token and everything after it
            if not stopped[row]:
                text = decode(new_ids[row])
                stopped[row] = ended or cut_at_stops(text, settings.until) != text
        if all(stopped):
            raise _AllStopped

    try:
        generate_ids(prompts, max_new_tokens=settings.max_gen_toks, temperature=settings.temperature,
                     top_k=settings.top_k, top_p=settings.top_p, seed=settings.seed, chunk=chunk, on_chunk=on_chunk)
    except _AllStopped:
        pass
    return [cut_at_stops(decode(ids), settings.until) for ids in new_ids]


def generation_prompts(encoded: Sequence[list[int]], settings: GenerationSettings, max_len: int, eot_id: int
                       ) -> list[list[int]]:
    """Prompts left-truncated to leave room for max_gen_toks inside `max_len`, as lm-eval's HF backend does
    (an empty prompt starts from end-of-text)."""
    room = max_len - settings.max_gen_toks
    if room <= 0:
        raise GptjaxError(f"max_gen_toks={settings.max_gen_toks} leaves no room for a prompt in the model's "
                          f"{max_len}-token window; ask for fewer tokens (gen_kwargs max_gen_toks)")
    return [list(ids[-room:]) or [eot_id] for ids in encoded]
