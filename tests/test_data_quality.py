"""Tests for gptjax.prepare.quality: every Gopher rule tripped and not tripped, and the vectorized n-gram maths."""
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gptjax.prepare.quality import GOPHER_STOP_WORDS, QualityConfig, check, failed_rules, measure, words_of

FIXTURE = Path(__file__).parent / "fixtures" / "data" / "dedup" / "inaugural_paragraphs.jsonl"
PARAGRAPHS = [json.loads(line)["text"] for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
VOCABULARY = sorted({word for paragraph in PARAGRAPHS for word in words_of(paragraph.lower())})
CONTENT_WORDS = [word for word in VOCABULARY
                 if word.isalpha() and word not in GOPHER_STOP_WORDS and 4 <= len(word) <= 8]


def random_words(count: int, seed: int, pool: list[str] = CONTENT_WORDS) -> list[str]:
    generator = np.random.default_rng(seed)
    return [pool[i] for i in generator.integers(len(pool), size=count)]


def prose(count: int, seed: int = 0) -> str:
    """Low-repetition text with stop words: random content words, every fifth word a stop word."""
    words = random_words(count, seed)
    for position in range(0, count, 5):
        words[position] = GOPHER_STOP_WORDS[(position // 5) % len(GOPHER_STOP_WORDS)]
    return " ".join(words)


def lines_of(count: int, words_per_line: int = 12, seed: int = 0) -> list[str]:
    return [prose(words_per_line, seed * 1000 + i) for i in range(count)]


def test_real_prose_passes_every_rule():
    assert check("\n\n".join(PARAGRAPHS[:5])) == []
    assert check(prose(300)) == []


def test_word_count_bounds():
    assert "too_few_words" in check(prose(49))
    assert "too_few_words" not in check(prose(50))
    many = prose(100_001)
    assert "too_many_words" in check(many)
    assert "too_many_words" not in check(prose(100_000 - 1))
    assert "too_many_words" in check(prose(300), QualityConfig(max_words=299))


def test_mean_word_length_bounds():
    short_words = [word for word in VOCABULARY if len(word) <= 2]
    tiny = " ".join(random_words(200, 1, short_words)) + " the and"
    assert measure(tiny)["mean_word_length"] < 3
    assert "mean_word_length_too_short" in check(tiny)
    long_words = [word for word in VOCABULARY if len(word) >= 12]
    huge = " ".join(random_words(200, 2, long_words)) + " the and"
    assert measure(huge)["mean_word_length"] > 10
    assert "mean_word_length_too_long" in check(huge)
    normal = check(prose(200))
    assert "mean_word_length_too_short" not in normal and "mean_word_length_too_long" not in normal


def test_hash_to_word_ratio():
    words = prose(200).split()
    tripped = " ".join(words + ["#"] * 21)
    assert measure(tripped)["hash_to_word_ratio"] == pytest.approx(21 / 200)
    assert "hash_to_word_ratio" in check(tripped)
    assert "hash_to_word_ratio" not in check(" ".join(words + ["#"] * 20))


def test_ellipsis_to_word_ratio_counts_both_spellings():
    words = prose(200).split()
    for index in range(0, 22, 2):
        words[index] += "..."
        words[index + 1] += "…"
    assert measure(" ".join(words))["ellipsis_to_word_ratio"] == pytest.approx(22 / 200)
    assert "ellipsis_to_word_ratio" in check(" ".join(words))
    assert "ellipsis_to_word_ratio" not in check(prose(200))


def test_ellipsis_line_fraction():
    lines = lines_of(10)
    tripped = [line + "..." if i < 4 else line for i, line in enumerate(lines)]
    kept = [line + " …" if i < 3 else line for i, line in enumerate(lines)]
    assert measure("\n".join(tripped))["ellipsis_line_fraction"] == pytest.approx(0.4)
    assert "ellipsis_line_fraction" in check("\n".join(tripped))
    assert "ellipsis_line_fraction" not in check("\n".join(kept))


def test_bullet_line_fraction():
    lines = lines_of(10, seed=3)
    all_bullets = [("• " if i % 2 else "- ") + line for i, line in enumerate(lines)]
    nine_bullets = ["  * " + line for line in lines[:9]] + [lines[9]]
    assert measure("\n".join(all_bullets))["bullet_line_fraction"] == 1.0
    assert "bullet_line_fraction" in check("\n".join(all_bullets))
    assert "bullet_line_fraction" not in check("\n".join(nine_bullets))
    assert "bullet_line_fraction" not in check("\n".join(nine_bullets), QualityConfig(bullets=("•",)))


def test_stop_words_need_two_distinct_ones():
    no_stop_words = " ".join(random_words(200, 4))
    only_the = " ".join(random_words(200, 4) + ["The", "the", "THE"])
    two = " ".join(random_words(200, 4) + ["the", "With"])
    assert "too_few_stop_words" in check(no_stop_words)
    assert "too_few_stop_words" in check(only_the)
    assert "too_few_stop_words" not in check(two)
    assert "too_few_stop_words" not in check(only_the, QualityConfig(min_stop_words=1))


def test_alphabetic_token_fraction():
    words = prose(200).split()
    numbers = [str(1000 + i) for i in range(60)]
    tripped = " ".join(words + numbers[:60])
    kept = " ".join(words + numbers[:40] + ["x1", "2b"])
    assert measure(tripped)["alphabetic_token_fraction"] == pytest.approx(200 / 260)
    assert "alphabetic_token_fraction" in check(tripped)
    assert "alphabetic_token_fraction" not in check(kept)


def test_duplicate_lines_and_their_characters():
    lines = lines_of(20, seed=5)
    repeated = lines[:13] + [lines[0]] * 7
    stats = measure("\n".join(repeated))
    assert stats["duplicate_line_fraction"] == pytest.approx(7 / 20)
    assert "duplicate_line_fraction" in check("\n".join(repeated))
    few = lines[:17] + [lines[0]] * 3
    assert "duplicate_line_fraction" not in check("\n".join(few))
    long_line = prose(120, seed=9)
    char_heavy = lines[:12] + [long_line, long_line]
    char_stats = measure("\n".join(char_heavy))
    assert char_stats["duplicate_line_fraction"] == pytest.approx(1 / 14)
    assert char_stats["duplicate_line_char_fraction"] > 0.2
    assert "duplicate_line_char_fraction" in check("\n".join(char_heavy))
    assert "duplicate_line_char_fraction" not in check("\n".join(lines))


def test_duplicate_paragraphs_and_their_characters():
    paragraphs = ["\n".join(lines_of(2, seed=10 + i)) for i in range(10)]
    repeated = paragraphs[:6] + [paragraphs[1]] * 4
    stats = measure("\n\n".join(repeated))
    assert stats["duplicate_paragraph_fraction"] == pytest.approx(0.4)
    assert stats["duplicate_paragraph_char_fraction"] == pytest.approx(0.4, abs=0.05)
    failures = check("\n\n".join(repeated))
    assert "duplicate_paragraph_fraction" in failures and "duplicate_paragraph_char_fraction" in failures
    kept = check("\n\n".join(paragraphs))
    assert "duplicate_paragraph_fraction" not in kept and "duplicate_paragraph_char_fraction" not in kept


def test_small_exact_values():
    assert measure("a\nb\n\na\na")["duplicate_line_fraction"] == pytest.approx(0.5)
    assert measure("a\nb\n\na\na")["duplicate_line_char_fraction"] == pytest.approx(0.5)
    stats = measure("a b a b a b c")
    assert stats["top_2gram_char_fraction"] == pytest.approx(6 / 7)
    assert stats["top_3gram_char_fraction"] == pytest.approx(6 / 7)
    five = "one two three four five "
    stats = measure(five * 2 + "zzzzzz")
    assert stats["duplicate_5gram_char_fraction"] == pytest.approx(38 / 44)
    assert stats["duplicate_6gram_char_fraction"] == 0.0
    assert measure("all words are different here")["top_2gram_char_fraction"] == 0.0


def test_top_ngram_rules():
    base = prose(300, seed=6).split()
    phrase = ["great", "nation"]
    stuffed = list(base)
    for position in range(0, 300, 6):
        stuffed[position:position + 2] = phrase
    stats = measure(" ".join(stuffed))
    assert stats["top_2gram_char_fraction"] > 0.2
    assert "top_2gram_char_fraction" in check(" ".join(stuffed))
    assert not [rule for rule in check(" ".join(base)) if rule.startswith("top_")]


def test_duplicate_ngram_rules():
    passage = prose(40, seed=7)
    repeated = prose(200, seed=8) + " " + passage + " " + prose(60, seed=11) + " " + passage
    stats = measure(repeated)
    assert stats["duplicate_10gram_char_fraction"] > 0.10
    failures = check(repeated)
    assert {f"duplicate_{n}gram_char_fraction" for n in range(5, 11)} <= set(failures)
    assert not [rule for rule in check(prose(300, seed=8)) if rule.startswith("duplicate_") and "gram" in rule]


def test_rules_can_be_switched_off():
    text = prose(20)
    assert "too_few_words" in check(text)
    assert "too_few_words" not in check(text, QualityConfig(min_words=None))
    assert failed_rules(measure(text), QualityConfig(min_words=None, min_stop_words=None)) == check(
        text, QualityConfig(min_words=None, min_stop_words=None)
    )


def test_empty_and_symbol_only_text_do_not_crash():
    assert "too_few_words" in check("")
    assert "alphabetic_token_fraction" in check("--- *** 123 ### ...")


def reference_ngram_fractions(text: str, n: int) -> tuple[float, float]:
    """Straightforward Python version of the top-n-gram and duplicate-n-gram character fractions."""
    words = words_of(text.lower())
    total = sum(map(len, words))
    ngrams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(ngrams)
    top = 0.0
    if counts and max(counts.values()) > 1:
        most = max(counts.values())
        top = max(sum(map(len, gram)) for gram, count in counts.items() if count == most) * most / total
    covered = [False] * len(words)
    for start, gram in enumerate(ngrams):
        if counts[gram] > 1:
            covered[start:start + n] = [True] * n
    duplicate = sum(len(word) for word, hit in zip(words, covered, strict=True) if hit) / total
    return top, duplicate


@pytest.mark.parametrize("seed", range(12))
def test_vectorized_ngrams_match_reference(seed):
    generator = np.random.default_rng(seed)
    small_pool = CONTENT_WORDS[: 3 + seed * 2]
    words = random_words(int(generator.integers(5, 400)), seed, small_pool)
    text = " ".join(words)
    stats = measure(text)
    for n in (2, 3, 4):
        assert stats[f"top_{n}gram_char_fraction"] == pytest.approx(reference_ngram_fractions(text, n)[0])
    for n in range(5, 11):
        assert stats[f"duplicate_{n}gram_char_fraction"] == pytest.approx(reference_ngram_fractions(text, n)[1])


def test_check_is_fast_on_long_documents():
    text = "\n\n".join(PARAGRAPHS) * 2
    assert len(text) > 100_000
    check(text)
    started = time.perf_counter()
    check(text)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.2, f"{elapsed:.3f}s for {len(text)} characters"
