"""Held-out scores of an ablation's finished runs, for choosing a swept value honestly.

The prepared data has two splits, train and val, and the trainer's own val loss is measured on windows drawn from
the whole val split. A tuned ablation therefore scores each run's final checkpoint (through `gptjax.load`) on two
disjoint contiguous halves of the val split's tokens: the first half (`SELECT`) chooses each variant's value, the
second (`REPORT`) gives the numbers the variants are compared on, which took no part in the choice. Scores are kept
in the run's `heldout.json`, tied to its checkpoint step and the token range, so a report is recomputed cheaply.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from gptjax import fileio

SELECT, REPORT = "select", "report"
HELDOUT_FILE = "heldout.json"
SPLIT = "val"
BATCH_SIZE = 64


@dataclasses.dataclass(frozen=True)
class TokenRange:
    """Tokens [start, stop) of the val split."""

    start: int
    stop: int

    def describe(self) -> str:
        return f"{SPLIT} tokens [{self.start}, {self.stop})"


def val_halves(n_tokens: int, max_tokens: int = 0) -> dict[str, TokenRange]:
    """The selection half (the first) and the report half (the second) of a split of `n_tokens`, each cut to its
    first `max_tokens` when that is set."""
    half = n_tokens // 2
    length = min(half, max_tokens) if max_tokens else half
    return {SELECT: TokenRange(0, length), REPORT: TokenRange(half, half + length)}


def score_tokens(lm, tokens: np.ndarray, per_byte: float) -> dict:
    """Loss, perplexity and bits/byte of `lm` over every window of `tokens` (`gptjax.eval.perplexity`'s definition)."""
    from gptjax.eval.perplexity import evaluate_tokens

    return evaluate_tokens(lm, tokens, BATCH_SIZE, per_byte, f"a held-out half of the {SPLIT} split")


def split_size(cfg) -> int:
    """Tokens in the val split of the run's prepared data."""
    from gptjax.prepare.resolve import open_data

    return open_data(cfg)[1]["splits"][SPLIT]["n_tokens"]


def _saved(workdir: Path, step: int, ranges: Mapping[str, TokenRange]) -> dict | None:
    path = workdir / HELDOUT_FILE
    if not path.is_file():
        return None
    saved = fileio.read_json(path, "held-out scores", "delete it to recompute")
    wanted = {name: dataclasses.asdict(r) for name, r in ranges.items()}
    if saved.get("step") != step or saved.get("ranges") != wanted:
        return None
    return saved["scores"]


def heldout_scores(run, step: int, max_tokens: int) -> dict[str, dict]:
    """{SELECT: {loss, ppl, bpb, tokens}, REPORT: {...}} of a run's checkpoint at `step`, read from its
    heldout.json when that holds this step and these halves, else computed and saved there."""
    ranges = val_halves(split_size(run.cfg), max_tokens)
    saved = _saved(run.workdir, step, ranges)
    if saved is not None:
        return saved
    import gptjax
    from gptjax.eval.perplexity import bytes_per_token, check_data_matches, split_tokens
    from gptjax.prepare.resolve import open_data

    lm = gptjax.load(run.workdir, step)
    data_dir = open_data(run.cfg)[0]
    check_data_matches(data_dir, lm.tokenizer)
    tokens = split_tokens(data_dir, SPLIT, lm.config.vocab_size)
    per_byte = bytes_per_token(data_dir, SPLIT)
    scores = {name: score_tokens(lm, tokens[r.start: r.stop], per_byte) for name, r in ranges.items()}
    fileio.write_json_atomic(run.workdir / HELDOUT_FILE, {
        "step": step, "ranges": {name: dataclasses.asdict(r) for name, r in ranges.items()}, "scores": scores})
    return scores


# ---- choosing a value --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One swept value of a variant: its finished seeds' mean loss on each half."""

    value: float
    seeds: int
    select_loss: float | None  # None: no seed finished, or a seed's loss is not finite (diverged)
    report_loss: float | None


def _finite_mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values and all(math.isfinite(v) for v in values) else None


def sweep_point(value: float, seed_scores: Sequence[Mapping[str, dict]]) -> SweepPoint:
    """A value's point from its finished seeds' held-out scores."""
    return SweepPoint(value=value, seeds=len(seed_scores),
                      select_loss=_finite_mean([s[SELECT]["loss"] for s in seed_scores]),
                      report_loss=_finite_mean([s[REPORT]["loss"] for s in seed_scores]))


def choose(points: Sequence[SweepPoint]) -> SweepPoint | None:
    """The point of lowest mean selection loss (the first of equals); None when no point has one."""
    scored = [p for p in points if p.select_loss is not None]
    return min(scored, key=lambda p: p.select_loss) if scored else None
