"""Planted near-duplicate corpora: real base documents, seeded copies of known kinds, and the ground truth.

`plant_corpus` takes distinct base documents and returns a shuffled corpus in which some bases appear twice: once
as they are and once as a copy of one kind (`COPY_KINDS`: identical, paragraphs reordered, a share of words
substituted / deleted / inserted or all three mixed, header and footer lines added). Hard negatives
(`NEGATIVE_KINDS`) are distinct documents made to look alike without being copies: a base wrapped in header and
footer lines from the pools the boilerplate copies draw from; of two bases of one source, the one with the largest
word overlap to the other; and a base into which one paragraph (at most a quarter) of an original is spliced.
`score_clusters` measures a dedup's clustering against that truth: recall per copy kind, pairwise precision per
kind and overall.

Everything is a pure function of its arguments and the seed (numpy's PCG64), so a corpus is the same in every
process and run.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from gptjax.errors import GptjaxError
from gptjax.prepare.dedup import UnionFind

ORIGINAL = "original"
DISTINCT = "distinct"
COPY_KINDS = ("exact", "reorder", "substitute", "delete", "insert", "mixed", "boilerplate")
WORD_EDIT_KINDS = ("substitute", "delete", "insert", "mixed")
NEGATIVE_KINDS = ("shared_boilerplate", "same_source", "quoted_paragraph")
HEADER_LINES = (
    "Home | News | Sports | Business | Opinion | Contact us",
    "You are here: Home > Archive > Articles",
    "Skip to main content. Sign in or register for a free account",
    "Menu Search Subscribe Log in",
    "Breaking: read the latest updates from our newsroom",
    "Posted by the editorial team in General Discussion",
)
FOOTER_LINES = (
    "Copyright 2006 Example Media Group. All rights reserved.",
    "Share this: Facebook Twitter Email Print",
    "Related posts: more stories from this section",
    "Privacy policy | Terms of use | Cookie settings | Advertise with us",
    "Comments are closed for this article.",
    "Subscribe to our newsletter for weekly updates delivered to your inbox",
    "Back to top",
)
_WORD_SPAN = re.compile(r"\S+")
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")


@dataclass(frozen=True)
class BaseDocument:
    """One real document to plant copies of; documents of one `source` share topic and style."""

    text: str
    source: str


@dataclass(frozen=True)
class PlantedCorpus:
    """A corpus with its ground truth, one entry per text in corpus order.

    `kinds[i]` is ORIGINAL (a base that has a copy), DISTINCT (a base without one), a copy kind or a negative
    kind; `copy_of[i]` is the index of the original text i copies, -1 for everything that is not a copy;
    `edit_rates[i]` the share of words edited (word edit kinds only, else 0).
    """

    texts: tuple[str, ...]
    kinds: tuple[str, ...]
    copy_of: tuple[int, ...]
    edit_rates: tuple[float, ...]

    def true_roots(self) -> np.ndarray:
        """For every text the index of the original it copies, itself when it copies nothing."""
        roots = np.arange(len(self.texts), dtype=np.int64)
        copy_of = np.asarray(self.copy_of, dtype=np.int64)
        roots[copy_of >= 0] = copy_of[copy_of >= 0]
        return roots


@dataclass(frozen=True)
class KindScore:
    """How a clustering did on the documents of one kind.

    `caught` counts the copies clustered with their original; `pairs` the predicted duplicate pairs with at least
    one document of this kind and `correct_pairs` those that are a copy and its original.
    """

    kind: str
    documents: int
    caught: int
    pairs: int
    correct_pairs: int

    @property
    def recall(self) -> float:
        return self.caught / self.documents if self.documents else 1.0

    @property
    def precision(self) -> float:
        return self.correct_pairs / self.pairs if self.pairs else 1.0


def cut_documents(text: str, words_per_document: int) -> list[str]:
    """`text` cut at line breaks into documents of at least `words_per_document` words (the rest joins the last)."""
    documents: list[str] = []
    lines: list[str] = []
    words = 0
    for line in text.splitlines(keepends=True):
        lines.append(line)
        words += len(line.split())
        if words >= words_per_document:
            documents.append("".join(lines).strip())
            lines, words = [], 0
    rest = "".join(lines).strip()
    if rest and documents:
        documents[-1] = documents[-1] + "\n" + rest
    elif rest:
        documents.append(rest)
    return documents


def _blocks_and_separator(text: str) -> tuple[list[str], str]:
    """Blank-line paragraphs and "\n\n" when there are three or more, else the non-blank lines and "\n"."""
    blocks = [block for block in _BLANK_LINES.split(text.strip()) if block.strip()]
    if len(blocks) >= 3:
        return blocks, "\n\n"
    return [line for line in text.splitlines() if line.strip()], "\n"


def paragraphs(text: str) -> list[str]:
    """The blocks a reordering moves: blank-line paragraphs when there are three or more, else non-blank lines."""
    return _blocks_and_separator(text)[0]


def reorder_paragraphs(text: str, generator: np.random.Generator) -> str:
    """`text` with its paragraphs (or lines) in a random order other than the original one."""
    blocks, separator = _blocks_and_separator(text)
    if len(set(blocks)) < 2:
        raise GptjaxError("planted corpus: a reordered copy needs a base with two or more different paragraphs or "
                          "lines; filter the bases with `can_reorder`")
    while True:
        order = generator.permutation(len(blocks))
        shuffled = [blocks[i] for i in order]
        if shuffled != blocks:
            return separator.join(shuffled)


def can_reorder(text: str) -> bool:
    """Whether `reorder_paragraphs` can make a different text of `text`."""
    return len(set(paragraphs(text))) >= 2


def edit_words(text: str, kind: str, rate: float, vocabulary: Sequence[str], generator: np.random.Generator) -> str:
    """`text` with `rate` of its words (at least one) substituted, deleted or inserted (`kind`; "mixed" draws
    each edit's action). Substituted and inserted words come from `vocabulary`; spacing and line breaks of the
    untouched words are kept."""
    if kind not in WORD_EDIT_KINDS:
        raise GptjaxError(f"planted corpus: word edit kind {kind!r} is unknown; "
                          f"use one of {', '.join(WORD_EDIT_KINDS)}")
    spans = [match.span() for match in _WORD_SPAN.finditer(text)]
    if not spans:
        return text
    n_edits = min(len(spans), max(1, round(rate * len(spans))))
    positions = set(generator.choice(len(spans), size=n_edits, replace=False).tolist())
    pieces: list[str] = []
    last = 0
    for index, (start, end) in enumerate(spans):
        pieces.append(text[last:start])
        last = end
        word = text[start:end]
        if index not in positions:
            pieces.append(word)
            continue
        action = kind if kind != "mixed" else WORD_EDIT_KINDS[int(generator.integers(3))]
        new_word = vocabulary[int(generator.integers(len(vocabulary)))]
        if action == "substitute":
            pieces.append(new_word if new_word != word else new_word + "s")
        elif action == "insert":
            pieces.append(f"{new_word} {word}")
        elif pieces and not pieces[-1].strip():
            pieces.pop()
    pieces.append(text[last:])
    return "".join(pieces).strip()


def boilerplate_lines(generator: np.random.Generator) -> tuple[str, str]:
    """A header (one or two lines) and a footer (one to three lines) drawn from the web-page line pools."""
    header = generator.choice(len(HEADER_LINES), size=int(generator.integers(1, 3)), replace=False)
    footer = generator.choice(len(FOOTER_LINES), size=int(generator.integers(1, 4)), replace=False)
    return "\n".join(HEADER_LINES[i] for i in header), "\n".join(FOOTER_LINES[i] for i in footer)


def add_boilerplate(text: str, header: str, footer: str) -> str:
    """`text` between header and footer lines."""
    return f"{header}\n{text}\n{footer}"


def splice_paragraph(text: str, quoted: str, generator: np.random.Generator) -> str:
    """`text` with the paragraph `quoted` inserted between two of its paragraphs (or lines)."""
    blocks = paragraphs(text)
    position = int(generator.integers(len(blocks) + 1))
    return "\n".join(blocks[:position] + [quoted] + blocks[position:])


def _closest_same_source(anchor: int, candidates: Sequence[int], bases: Sequence[BaseDocument],
                         word_sets: Sequence[frozenset[str]]) -> int:
    """The candidate base of the anchor's source with the largest Jaccard of distinct lowercased words to it,
    -1 when the source has no other candidate."""
    best, best_overlap = -1, -1.0
    for candidate in candidates:
        if bases[candidate].source != bases[anchor].source:
            continue
        shared = len(word_sets[anchor] & word_sets[candidate])
        overlap = shared / max(len(word_sets[anchor]) + len(word_sets[candidate]) - shared, 1)
        if overlap > best_overlap:
            best, best_overlap = candidate, overlap
    return best


def _quotable_paragraph(text: str, max_share: float) -> str:
    """The longest paragraph (or line) of `text` holding at most `max_share` of its words ("" when none)."""
    n_words = len(text.split())
    fitting = [block for block in paragraphs(text) if len(block.split()) <= max_share * n_words]
    return max(fitting, key=lambda block: len(block.split()), default="")


class _Entry(NamedTuple):
    text: str
    kind: str
    copy_of: int
    edit_rate: float


def plant_copy(text: str, kind: str, vocabulary: Sequence[str], edit_rates: tuple[float, float],
               generator: np.random.Generator) -> tuple[str, float]:
    """One copy of `text` of a copy kind, and the share of words it edits (drawn from `edit_rates`; 0 for kinds
    that edit no words)."""
    if kind == "exact":
        return text, 0.0
    if kind == "reorder":
        return reorder_paragraphs(text, generator), 0.0
    if kind == "boilerplate":
        return add_boilerplate(text, *boilerplate_lines(generator)), 0.0
    rate = float(generator.uniform(*edit_rates))
    return edit_words(text, kind, rate, vocabulary, generator), rate


def _take(unused: list[int], predicate: Callable[[int], bool] | None = None) -> int:
    """Removes and returns the first unused base index that satisfies `predicate`."""
    for position, index in enumerate(unused):
        if predicate is None or predicate(index):
            return unused.pop(position)
    raise GptjaxError("planted corpus: no base document left that fits; pass more (or longer) bases")


def _negatives(bases: Sequence[BaseDocument], unused: list[int], originals: Sequence[str], count: int,
               quoted_share: float, generator: np.random.Generator) -> list[_Entry]:
    """`count` negatives of each negative kind, taking their bases from `unused` (a same-source negative comes with
    the distinct base it resembles)."""
    entries = [_Entry(add_boilerplate(bases[_take(unused)].text, *boilerplate_lines(generator)),
                      "shared_boilerplate", -1, 0.0) for _ in range(count)]
    word_sets = [frozenset(base.text.lower().split()) for base in bases] if count else []
    for _ in range(count):
        anchor = _take(unused)
        closest = _closest_same_source(anchor, unused, bases, word_sets)
        partner = _take(unused, (lambda index: index == closest) if closest >= 0 else None)
        entries += [_Entry(bases[anchor].text, DISTINCT, -1, 0.0), _Entry(bases[partner].text, "same_source", -1, 0.0)]
    for number in range(count):
        quoted = _quotable_paragraph(originals[number % len(originals)], quoted_share) if originals else ""
        host = bases[_take(unused)].text
        spliced = splice_paragraph(host, quoted, generator) if quoted else host
        entries.append(_Entry(spliced, "quoted_paragraph", -1, 0.0))
    return entries


def _check_plant_arguments(n_bases: int, copies_per_kind: int, negatives_per_kind: int,
                           edit_rates: tuple[float, float], kinds: Sequence[str]) -> None:
    unknown = sorted(set(kinds) - set(COPY_KINDS))
    if unknown:
        raise GptjaxError(f"planted corpus: copy kinds {unknown} are unknown; use some of {', '.join(COPY_KINDS)}")
    if not 0.0 < edit_rates[0] <= edit_rates[1] < 1.0:
        raise GptjaxError(f"planted corpus: edit_rates {edit_rates} must satisfy 0 < low <= high < 1")
    n_needed = copies_per_kind * len(kinds) + 4 * negatives_per_kind
    if n_bases < n_needed:
        raise GptjaxError(f"planted corpus: {n_bases} base documents are too few for {copies_per_kind} copies of "
                          f"{len(kinds)} kinds and {negatives_per_kind} negatives of each of {len(NEGATIVE_KINDS)} "
                          f"kinds; pass at least {n_needed} bases or ask for fewer copies")


def plant_corpus(bases: Sequence[BaseDocument], copies_per_kind: int, negatives_per_kind: int,
                 edit_rates: tuple[float, float] = (0.01, 0.08), seed: int = 0,
                 kinds: Sequence[str] = COPY_KINDS, quoted_share: float = 0.25) -> PlantedCorpus:
    """A shuffled corpus of all `bases` with `copies_per_kind` copies of each of `kinds` (each of a different
    base; word edits at a rate drawn uniformly from `edit_rates`) and `negatives_per_kind` hard negatives of each
    negative kind (`quoted_paragraph` splices in a paragraph of at most `quoted_share` of an original's words).

    Bases must be distinct documents (not near-duplicates of each other): the truth says nothing about them.
    """
    _check_plant_arguments(len(bases), copies_per_kind, negatives_per_kind, edit_rates, kinds)
    generator = np.random.default_rng(seed)
    vocabulary = sorted({word for base in bases for word in base.text.split()})
    unused = [int(i) for i in generator.permutation(len(bases))]
    entries: list[_Entry] = []
    for kind in kinds:
        reorderable = (lambda index: can_reorder(bases[index].text)) if kind == "reorder" else None
        for _ in range(copies_per_kind):
            original = bases[_take(unused, reorderable)].text
            text, rate = plant_copy(original, kind, vocabulary, edit_rates, generator)
            entries += [_Entry(original, ORIGINAL, -1, 0.0), _Entry(text, kind, len(entries), rate)]
    originals = [entry.text for entry in entries if entry.kind == ORIGINAL]
    entries += _negatives(bases, unused, originals, negatives_per_kind, quoted_share, generator)
    entries += [_Entry(bases[index].text, DISTINCT, -1, 0.0) for index in unused]
    return _shuffled(entries, generator)


def _shuffled(entries: list[_Entry], generator: np.random.Generator) -> PlantedCorpus:
    """The entries in a random corpus order, with `copy_of` renumbered to the new positions."""
    order = generator.permutation(len(entries))
    position_of = np.empty(len(entries), dtype=np.int64)
    position_of[order] = np.arange(len(entries))
    shuffled = [entries[i] for i in order]
    return PlantedCorpus(texts=tuple(entry.text for entry in shuffled), kinds=tuple(entry.kind for entry in shuffled),
                         copy_of=tuple(int(position_of[entry.copy_of]) if entry.copy_of >= 0 else -1
                                       for entry in shuffled),
                         edit_rates=tuple(entry.edit_rate for entry in shuffled))


def predicted_pairs(roots: np.ndarray) -> list[tuple[int, int]]:
    """Every pair (i < j) of texts that a clustering (cluster representative per text) puts together."""
    members: dict[int, list[int]] = {}
    for index, root in enumerate(np.asarray(roots).tolist()):
        members.setdefault(root, []).append(index)
    return [(first, second) for group in members.values() if len(group) > 1
            for k, first in enumerate(group) for second in group[k + 1:]]


def score_clusters(corpus: PlantedCorpus, roots: np.ndarray) -> dict[str, KindScore]:
    """Recall and pairwise precision of a clustering against the corpus's truth, per kind and over "all".

    A copy is caught when it shares its original's cluster; a predicted pair is correct when one text is a copy
    of the other. Kinds without copies (originals, distinct bases, negatives) have no recall of their own.
    """
    if len(roots) != len(corpus.texts):
        raise GptjaxError(f"planted corpus scores: {len(roots)} cluster roots for {len(corpus.texts)} texts; "
                          "pass one representative per text")
    roots = np.asarray(roots)
    truth = corpus.true_roots()
    pairs = predicted_pairs(roots)
    kinds = sorted(set(corpus.kinds), key=lambda kind: (kind not in COPY_KINDS, kind))
    scores = {}
    for kind in kinds + ["all"]:
        members = [i for i, k in enumerate(corpus.kinds) if kind in (k, "all")]
        copies = [i for i in members if corpus.copy_of[i] >= 0]
        touching = [(a, b) for a, b in pairs if kind == "all" or kind in (corpus.kinds[a], corpus.kinds[b])]
        scores[kind] = KindScore(
            kind=kind, documents=len(copies),
            caught=sum(int(roots[i] == roots[corpus.copy_of[i]]) for i in copies),
            pairs=len(touching), correct_pairs=sum(int(truth[a] == truth[b]) for a, b in touching))
    return scores


def roots_from_pairs(n_texts: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Cluster representative (smallest index) of every text after joining each pair of text indices: how the
    output of a dedup that reports duplicate pairs, or each dropped text's kept copy, becomes `score_clusters` input."""
    clusters = UnionFind(n_texts)
    for first, second in pairs:
        clusters.union(int(first), int(second))
    return clusters.roots()


def decision_pairs(decisions: Iterable[dict]) -> list[tuple[int, int]]:
    """(dropped, kept) text indices from `gptjax prepare --decisions` records of a one-file JSONL corpus (its lines
    are the texts in order; a record's `source` is "PATH:LINE")."""
    def line_index(source: str) -> int:
        return int(source.rsplit(":", 1)[1]) - 1

    return [(line_index(record["source"]), line_index(record["duplicate_of"]["source"]))
            for record in decisions if not record["kept"] and "duplicate_of" in record]
