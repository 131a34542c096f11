"""Tests for gptjax.prepare.langid on known sentences (lingua test data) and UDHR texts."""
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from gptjax.errors import GptjaxError
from gptjax.prepare.documents import make_document
from gptjax.prepare.langid import (
    LangIdConfig,
    bounded_sample,
    canonical_language,
    detect,
    filter_languages,
    keep_language,
    language_probabilities,
    supported_languages,
    target_probability,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data" / "langid"


def lingua_sentences() -> dict[str, list[str]]:
    by_language = defaultdict(list)
    for line in (FIXTURES / "lingua_first10.tsv").read_text(encoding="utf-8").splitlines():
        language, sentence = line.split("\t", 1)
        by_language[language].append(sentence)
    return dict(by_language)


def udhr(key: str) -> str:
    return (FIXTURES / f"udhr_{key}.txt").read_text(encoding="utf-8")


def test_known_sentences_are_identified():
    sentences = lingua_sentences()
    assert len(sentences) == 22 and all(len(lines) == 10 for lines in sentences.values())
    correct = Counter()
    for language, lines in sentences.items():
        correct[language] = sum(detect(line)[0] == language for line in lines)
    assert all(count >= 9 for count in correct.values()), correct
    assert sum(correct.values()) / 220 >= 0.97


def test_probabilities_are_normalized():
    probabilities = language_probabilities(lingua_sentences()["de"][0])
    assert set(probabilities) == set(supported_languages())
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert all(0.0 <= value <= 1.0 for value in probabilities.values())
    language, probability = detect(lingua_sentences()["de"][0])
    assert language == "de"
    assert probability == pytest.approx(max(probabilities.values()), abs=1e-6)


@pytest.mark.parametrize(("key", "language"), [("eng", "en"), ("rus", "ru"), ("cmn_hans", "zh")])
def test_whole_udhr_documents(key, language):
    text = udhr(key)
    assert len(text) > LangIdConfig().sample_chars
    detected, probability = detect(text)
    assert detected == language
    assert probability > 0.99


def test_filter_keeps_target_language_and_drops_others():
    sentences = lingua_sentences()
    documents = [
        make_document(text, f"{language}:{i}")
        for language in ("en", "de", "fr") for i, text in enumerate(sentences[language])
    ]
    kept = list(filter_languages(documents, LangIdConfig(languages=("en",), threshold=0.5)))
    assert {doc.source.split(":")[0] for doc in kept} == {"en"}
    assert len(kept) >= 9
    kept_two = list(filter_languages(documents, LangIdConfig(languages=("en", "de"), threshold=0.5)))
    assert {doc.source.split(":")[0] for doc in kept_two} == {"en", "de"}
    assert len(kept_two) >= 18


def test_threshold_controls_what_is_kept():
    sentences = lingua_sentences()["en"]
    probabilities = [target_probability(text, LangIdConfig())[1] for text in sentences]
    threshold = sorted(probabilities)[5]
    kept = [keep_language(text, LangIdConfig(threshold=threshold)) for text in sentences]
    assert kept == [probability >= threshold for probability in probabilities]
    assert 0 < sum(kept) < 10


def test_target_probability_picks_best_target():
    german = lingua_sentences()["de"][1]
    best, probability = target_probability(german, LangIdConfig(languages=("fr", "de", "en")))
    assert best == "de" and probability > 0.5


def test_language_codes_are_validated_and_aliased():
    assert canonical_language("NB") == "no"
    assert LangIdConfig(languages=("nb",)).languages == ("nb",)
    with pytest.raises(GptjaxError, match="xx"):
        LangIdConfig(languages=("en", "xx"))
    with pytest.raises(GptjaxError):
        LangIdConfig(languages=())
    with pytest.raises(GptjaxError):
        LangIdConfig(threshold=1.5)


def test_bounded_sample_spreads_windows_over_long_text():
    text = " ".join(f"w{i:07d}" for i in range(100_000))
    sample = bounded_sample(text, 2000)
    assert len(sample) <= 2000 + 3
    assert sample.startswith("w0000000")
    assert "w0099" in sample
    assert bounded_sample("short text", 2000) == "short text"
    assert bounded_sample(text, 2000) == sample


def test_long_documents_are_identified_on_a_bounded_sample():
    """How long this takes is measured by benchmarks/langid_accuracy.py (a timing does not belong in a test)."""
    document = udhr("eng") * 300
    assert len(document) > 3_000_000
    assert detect(document)[0] == "en"


def test_text_without_letters_does_not_crash():
    language, probability = detect("")
    assert isinstance(language, str) and 0.0 <= probability <= 1.0
    assert not keep_language("1234 5678 !!!", LangIdConfig(threshold=0.5))
