"""Language identification with py3langid (its model ships inside the package; no download).

Probabilities are py3langid's normalized ones (a softmax over the labels of its bundled model). A long
document is classified on a bounded, evenly spread sample of its text, so cost per document is
capped and the probability scale (which py3langid tempers by input length) stays comparable.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gptjax.errors import GptjaxError
from gptjax.prepare.documents import Document

DEFAULT_SAMPLE_CHARS = 2000
SAMPLE_WINDOWS = 4

LANGUAGE_ALIASES = {"nb": "no"}


@dataclass(frozen=True)
class LangIdConfig:
    """Which languages to keep and how sure the classifier must be.

    A document is kept when its probability for any of ``languages`` is at least ``threshold``.
    Texts longer than ``sample_chars`` are classified on a sample of that many characters.
    """

    languages: tuple[str, ...] = ("en",)
    threshold: float = 0.5
    sample_chars: int = DEFAULT_SAMPLE_CHARS

    def __post_init__(self) -> None:
        if not self.languages:
            raise GptjaxError("language filter: no language given; name at least one ISO 639 code such as 'en'")
        if not 0.0 <= self.threshold <= 1.0:
            raise GptjaxError(f"language filter: threshold {self.threshold} must lie in [0, 1]")
        if self.sample_chars < SAMPLE_WINDOWS:
            raise GptjaxError(f"language filter: sample_chars={self.sample_chars} must be at least {SAMPLE_WINDOWS}")
        unknown = sorted(set(map(canonical_language, self.languages)) - set(supported_languages()))
        if unknown:
            raise GptjaxError(f"language filter: py3langid does not know the codes {', '.join(unknown)}; use codes "
                              f"from gptjax.prepare.langid.supported_languages(), e.g. en, de, fr")


@functools.lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def supported_languages() -> tuple[str, ...]:
    """The language codes the bundled py3langid model can output."""
    return tuple(_identifier().labels)


def canonical_language(code: str) -> str:
    """Map a language code to the label py3langid uses for it (e.g. Norwegian Bokmål 'nb' -> 'no')."""
    lowered = code.lower()
    return LANGUAGE_ALIASES.get(lowered, lowered)


def _snap_to_space(text: str, position: int, limit: int) -> int:
    space = text.find(" ", position, min(limit, position + 64))
    return space + 1 if space >= 0 else position


def bounded_sample(text: str, max_chars: int = DEFAULT_SAMPLE_CHARS) -> str:
    """Return ``text`` if short, else ``SAMPLE_WINDOWS`` windows spread evenly over it, about ``max_chars`` in total.

    Windows start after a space where one is near, so words are rarely cut in half.
    """
    if len(text) <= max_chars:
        return text
    window = max_chars // SAMPLE_WINDOWS
    stride = (len(text) - window) / (SAMPLE_WINDOWS - 1)
    windows = []
    for index in range(SAMPLE_WINDOWS):
        start = int(index * stride)
        start = _snap_to_space(text, start, len(text)) if index else start
        windows.append(text[start:start + window])
    return "\n".join(windows)


def language_probabilities(text: str, sample_chars: int = DEFAULT_SAMPLE_CHARS) -> dict[str, float]:
    """Probability of every supported language for ``text`` (classified on a bounded sample)."""
    return dict(_identifier().rank(bounded_sample(text, sample_chars)))


def detect(text: str, sample_chars: int = DEFAULT_SAMPLE_CHARS) -> tuple[str, float]:
    """Most likely language of ``text`` and its probability."""
    language, probability = _identifier().classify(bounded_sample(text, sample_chars))
    return language, float(probability)


def best_target(probabilities: dict[str, float], config: LangIdConfig) -> tuple[str, float]:
    """The most probable of the target languages under ``probabilities``, and its probability."""
    targets = [canonical_language(code) for code in config.languages]
    best = max(targets, key=lambda code: probabilities.get(code, 0.0))
    return best, probabilities.get(best, 0.0)


def target_probability(text: str, config: LangIdConfig) -> tuple[str, float]:
    """The target language ``text`` most likely is, and that probability."""
    return best_target(language_probabilities(text, config.sample_chars), config)


def keep_language(text: str, config: LangIdConfig) -> bool:
    """True when ``text``'s probability for some target language reaches the threshold."""
    return target_probability(text, config)[1] >= config.threshold


def filter_languages(documents: Iterable[Document], config: LangIdConfig) -> Iterator[Document]:
    """Yield the documents that ``keep_language`` accepts, in order."""
    for document in documents:
        if keep_language(document.text, config):
            yield document
