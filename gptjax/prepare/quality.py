"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models", appendix A).

``measure`` computes every statistic the rules look at; ``check`` compares them with a
``QualityConfig`` (defaults = Gopher's published thresholds) and names the rules a text breaks.

Word conventions: a *word* is a run of letters/digits, possibly joined by an apostrophe or hyphen
("don't", "well-known"), found by one regex over the text; it drives the word count, mean word
length, stop words and n-grams (lowercased). A *token* is a whitespace-separated chunk; it drives
the alphabetic-token share (a token such as "1998" or "--" has no letter). Lines and paragraphs
(split on blank lines) ignore blank ones. The n-gram figures follow the definitions RedPajama-V2
uses for Gopher's rules: characters are the characters of words, the top n-gram counts all its
occurrences, and a duplicate n-gram covers every occurrence of an n-gram seen more than once,
without counting a word twice.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from gptjax.errors import GptjaxError

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
GOPHER_TOP_NGRAM_MAX_CHAR_FRACTIONS = ((2, 0.20), (3, 0.18), (4, 0.16))
GOPHER_DUPLICATE_NGRAM_MAX_CHAR_FRACTIONS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
DEFAULT_BULLETS = ("•", "●", "○", "◦", "▪", "‣", "⁃", "-", "*")
ELLIPSES = ("...", "…")

_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_LETTER = re.compile(r"[^\W\d_]")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_NGRAM_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the Gopher rules; every default is the value published for Gopher.

    A ``None`` threshold switches its rule off. N-gram rules are ``(n, max_char_fraction)`` pairs.
    """

    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_hash_to_word_ratio: float | None = 0.1
    max_ellipsis_to_word_ratio: float | None = 0.1
    max_ellipsis_line_fraction: float | None = 0.3
    max_bullet_line_fraction: float | None = 0.9
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] = GOPHER_STOP_WORDS
    min_alphabetic_token_fraction: float | None = 0.8
    max_duplicate_line_fraction: float | None = 0.30
    max_duplicate_paragraph_fraction: float | None = 0.30
    max_duplicate_line_char_fraction: float | None = 0.20
    max_duplicate_paragraph_char_fraction: float | None = 0.20
    top_ngram_max_char_fractions: tuple[tuple[int, float], ...] = GOPHER_TOP_NGRAM_MAX_CHAR_FRACTIONS
    duplicate_ngram_max_char_fractions: tuple[tuple[int, float], ...] = GOPHER_DUPLICATE_NGRAM_MAX_CHAR_FRACTIONS
    bullets: tuple[str, ...] = DEFAULT_BULLETS

    def __post_init__(self) -> None:
        ngram_sizes = [n for n, _ in self.top_ngram_max_char_fractions + self.duplicate_ngram_max_char_fractions]
        if any(n < 1 for n in ngram_sizes):
            raise GptjaxError(f"quality settings: n-gram sizes must be >= 1, got {ngram_sizes}")


def words_of(text: str) -> list[str]:
    """The words of ``text`` in order (letter/digit runs, apostrophe- or hyphen-joined)."""
    return _WORD.findall(text)


def _non_blank(parts: list[str]) -> list[str]:
    return [part for part in parts if part.strip()]


def _duplicate_fractions(units: list[str]) -> tuple[float, float]:
    """Share of units that repeat an earlier unit, and the share of characters in those repeats."""
    if not units:
        return 0.0, 0.0
    counts = Counter(units)
    repeated = sum(count - 1 for count in counts.values())
    repeated_chars = sum((count - 1) * len(unit) for unit, count in counts.items())
    total_chars = sum(len(unit) * count for unit, count in counts.items())
    return repeated / len(units), (repeated_chars / total_chars if total_chars else 0.0)


def _word_keys(lowercase_words: list[str]) -> np.ndarray:
    """One 64-bit key per word, equal for equal words (Python's str hash: stable within a process)."""
    return np.fromiter(map(hash, lowercase_words), dtype=np.int64, count=len(lowercase_words)).view(np.uint64)


def _repeated_mask(keys: np.ndarray) -> np.ndarray:
    """True where ``keys[i]`` occurs more than once in ``keys``."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    equal_next = ordered[1:] == ordered[:-1]
    repeated = np.zeros(keys.size, dtype=bool)
    repeated[order[1:][equal_next]] = True
    repeated[order[:-1][equal_next]] = True
    return repeated


def _top_ngram_char_fraction(keys: np.ndarray, ngram_chars: np.ndarray, total_chars: int) -> float:
    """Characters in all occurrences of the most frequent n-gram (the longest among ties) over all characters."""
    ordered = np.sort(keys)
    run_starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    run_lengths = np.diff(np.append(run_starts, ordered.size))
    most = int(run_lengths.max())
    if most < 2:
        return 0.0
    most_frequent = ordered[run_starts[run_lengths == most]]
    return float(ngram_chars[np.isin(keys, most_frequent)].max()) * most / total_chars


def _ngram_statistics(
    lowercase_words: list[str], top_sizes: list[int], duplicate_sizes: list[int]
) -> tuple[dict[int, float], dict[int, float]]:
    """Top-n-gram and duplicate-n-gram character fractions for the requested sizes, vectorized.

    N-gram keys are built by extending (n-1)-gram keys one word at a time. For duplicates only
    positions whose (n-1)-grams at i and i+1 both repeat can start a repeated n-gram, so each size
    looks at fewer positions than the last.
    """
    top = dict.fromkeys(top_sizes, 0.0)
    duplicate = dict.fromkeys(duplicate_sizes, 0.0)
    n_words = len(lowercase_words)
    lengths = np.fromiter(map(len, lowercase_words), dtype=np.int64, count=n_words)
    total_chars = int(lengths.sum())
    largest = min(max(top_sizes + duplicate_sizes, default=0), n_words)
    if total_chars == 0 or largest == 0:
        return top, duplicate
    word_keys = _word_keys(lowercase_words)
    char_prefix = np.concatenate(([0], np.cumsum(lengths)))
    keys = word_keys
    repeated_starts = np.ones(n_words, dtype=bool)
    for n in range(1, largest + 1):
        if n > 1:
            keys = keys[:-1] * _NGRAM_HASH_MULTIPLIER + word_keys[n - 1:]
            repeated_starts = repeated_starts[:-1] & repeated_starts[1:]
        ngram_chars = char_prefix[n:] - char_prefix[:-n]
        if n in top:
            top[n] = _top_ngram_char_fraction(keys, ngram_chars, total_chars)
        if not repeated_starts.any():
            if n >= max(top_sizes, default=0):
                break
            continue
        candidates = np.flatnonzero(repeated_starts)
        repeated_starts[candidates[~_repeated_mask(keys[candidates])]] = False
        if n in duplicate:
            starts = np.flatnonzero(repeated_starts)
            boundaries = np.bincount(starts, minlength=n_words + 1) - np.bincount(starts + n, minlength=n_words + 1)
            covered = np.cumsum(boundaries)[:n_words] > 0
            duplicate[n] = float(lengths[covered].sum()) / total_chars
    return top, duplicate


def measure(text: str, config: QualityConfig = QualityConfig()) -> dict[str, float]:
    """Every statistic the Gopher rules use, keyed by name (n-gram keys: ``top_2gram_char_fraction`` etc.)."""
    lowercase_words = words_of(text.lower())
    tokens = text.split()
    lines = _non_blank(text.split("\n"))
    paragraphs = _non_blank(_PARAGRAPH_BREAK.split(text))
    n_words = len(lowercase_words)
    word_divisor = max(n_words, 1)
    line_divisor = max(len(lines), 1)
    stripped_lines = [line.strip() for line in lines]
    stop_words = set(config.stop_words)
    duplicate_line_fraction, duplicate_line_char_fraction = _duplicate_fractions(stripped_lines)
    duplicate_paragraph_fraction, duplicate_paragraph_char_fraction = _duplicate_fractions(
        [paragraph.strip() for paragraph in paragraphs]
    )
    top, duplicate = _ngram_statistics(
        lowercase_words,
        [n for n, _ in config.top_ngram_max_char_fractions],
        [n for n, _ in config.duplicate_ngram_max_char_fractions],
    )
    statistics = {
        "word_count": float(n_words),
        "mean_word_length": sum(map(len, lowercase_words)) / word_divisor,
        "hash_to_word_ratio": text.count("#") / word_divisor,
        "ellipsis_to_word_ratio": sum(text.count(ellipsis) for ellipsis in ELLIPSES) / word_divisor,
        "ellipsis_line_fraction": sum(line.endswith(ELLIPSES) for line in stripped_lines) / line_divisor,
        "bullet_line_fraction": sum(line.startswith(config.bullets) for line in stripped_lines) / line_divisor,
        "stop_word_count": float(len(stop_words.intersection(lowercase_words))),
        "alphabetic_token_fraction": sum(map(bool, map(_LETTER.search, tokens))) / max(len(tokens), 1),
        "duplicate_line_fraction": duplicate_line_fraction,
        "duplicate_paragraph_fraction": duplicate_paragraph_fraction,
        "duplicate_line_char_fraction": duplicate_line_char_fraction,
        "duplicate_paragraph_char_fraction": duplicate_paragraph_char_fraction,
    }
    statistics.update({f"top_{n}gram_char_fraction": fraction for n, fraction in top.items()})
    statistics.update({f"duplicate_{n}gram_char_fraction": fraction for n, fraction in duplicate.items()})
    return statistics


def failed_rules(statistics: dict[str, float], config: QualityConfig = QualityConfig()) -> list[str]:
    """Names of the rules that ``statistics`` (from ``measure``) break under ``config``."""
    lower_bounds = {
        "too_few_words": ("word_count", config.min_words),
        "mean_word_length_too_short": ("mean_word_length", config.min_mean_word_length),
        "too_few_stop_words": ("stop_word_count", config.min_stop_words),
        "alphabetic_token_fraction": ("alphabetic_token_fraction", config.min_alphabetic_token_fraction),
    }
    upper_bounds = {
        "too_many_words": ("word_count", config.max_words),
        "mean_word_length_too_long": ("mean_word_length", config.max_mean_word_length),
        "hash_to_word_ratio": ("hash_to_word_ratio", config.max_hash_to_word_ratio),
        "ellipsis_to_word_ratio": ("ellipsis_to_word_ratio", config.max_ellipsis_to_word_ratio),
        "ellipsis_line_fraction": ("ellipsis_line_fraction", config.max_ellipsis_line_fraction),
        "bullet_line_fraction": ("bullet_line_fraction", config.max_bullet_line_fraction),
        "duplicate_line_fraction": ("duplicate_line_fraction", config.max_duplicate_line_fraction),
        "duplicate_paragraph_fraction": ("duplicate_paragraph_fraction", config.max_duplicate_paragraph_fraction),
        "duplicate_line_char_fraction": ("duplicate_line_char_fraction", config.max_duplicate_line_char_fraction),
        "duplicate_paragraph_char_fraction": (
            "duplicate_paragraph_char_fraction",
            config.max_duplicate_paragraph_char_fraction,
        ),
    }
    for n, limit in config.top_ngram_max_char_fractions:
        upper_bounds[f"top_{n}gram_char_fraction"] = (f"top_{n}gram_char_fraction", limit)
    for n, limit in config.duplicate_ngram_max_char_fractions:
        upper_bounds[f"duplicate_{n}gram_char_fraction"] = (f"duplicate_{n}gram_char_fraction", limit)
    failed = [rule for rule, (key, limit) in lower_bounds.items() if limit is not None and statistics[key] < limit]
    failed += [rule for rule, (key, limit) in upper_bounds.items() if limit is not None and statistics[key] > limit]
    return failed


def check(text: str, config: QualityConfig = QualityConfig()) -> list[str]:
    """Names of the Gopher rules ``text`` breaks; an empty list means keep the document."""
    return failed_rules(measure(text, config), config)
