"""Deduplication: exact (normalized-text hash), near-duplicate (MinHash + LSH + union-find), boilerplate lines.

Everything a stage computes per document (exact keys, shingle hashes, MinHash signatures, line
keys) is a pure function of that document's text and is identical in every process, so it can run
on parallel workers; only the cluster step (``NearDuplicateIndex``) and line counting see the whole
corpus, each in a single pass. MinHash is a vectorized numpy implementation: each word is hashed
once (CRC-32 in C), shingle hashes are combined from word hashes with array arithmetic, and the
``num_perm`` permutations are ``(a*x + b) mod p`` over uint64 (see benchmarks/results/dedup_choice.md for why not datasketch).
"""
from __future__ import annotations

import functools
import hashlib
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gptjax.data.documents import Document, with_text

Unit = Literal["line", "paragraph"]

MINHASH_PRIME = np.uint64(4294967291)
_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_PARAGRAPH_SPLIT = re.compile(r"(\n[ \t\r\f\v]*\n\s*)")
_SHINGLE_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_PERMUTATION_CHUNK = 4096


def exact_normal_form(text: str) -> str:
    """The text exact dedup compares: lowercased, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(text.lower().split())


def exact_key(text: str) -> bytes:
    """16-byte hash of ``exact_normal_form(text)``; equal keys mean exact duplicates."""
    return hashlib.blake2b(exact_normal_form(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def exact_dedup(documents: Iterable[Document]) -> Iterator[Document]:
    """Yield each document whose normalized text has not been seen before (the first copy survives)."""
    seen: set[bytes] = set()
    for document in documents:
        key = exact_key(document.text)
        if key not in seen:
            seen.add(key)
            yield document


@dataclass(frozen=True)
class MinHashConfig:
    """Near-duplicate settings.

    Shingles are word ``ngram``-grams of the lowercased text. ``bands`` x ``rows`` signature values
    (at most ``num_perm``) feed LSH; a pair sharing one band is a candidate. With ``verify`` a
    candidate pair only joins a cluster when the Jaccard similarity of its shingle sets is at least
    ``threshold``; without it every candidate pair joins. The defaults (20 bands of 6 rows) make a
    pair at Jaccard 0.8 a candidate with probability 0.998 and one at 0.5 with probability 0.27.
    """

    ngram: int = 5
    num_perm: int = 120
    bands: int = 20
    rows: int = 6
    threshold: float = 0.8
    verify: bool = True
    seed: int = 1

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.num_perm < 1 or self.bands < 1 or self.rows < 1:
            raise ValueError("MinHashConfig.ngram, num_perm, bands and rows must all be >= 1")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"MinHashConfig uses bands*rows={self.bands * self.rows} signature values but num_perm={self.num_perm}; "
                "raise num_perm or lower bands/rows"
            )
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"MinHashConfig.threshold={self.threshold} must lie in (0, 1]")


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that LSH with ``bands`` x ``rows`` makes a pair of this Jaccard similarity a candidate."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: scrambles uint64 values so every output bit depends on every input bit."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def word_hashes(words: list[str]) -> np.ndarray:
    """Stable 64-bit hash of each word (the same in every process): CRC-32 and byte length, scrambled.

    Words must not contain NUL (regex words never do); all are encoded in one call.
    """
    if not words:
        return np.zeros(0, dtype=np.uint64)
    encoded = "\x00".join(words).encode("utf-8", "surrogatepass").split(b"\x00")
    checksums = np.fromiter(map(zlib.crc32, encoded), dtype=np.uint64, count=len(encoded))
    lengths = np.fromiter(map(len, encoded), dtype=np.uint64, count=len(encoded))
    return _mix64(checksums | (lengths << np.uint64(32)))


def shingle_hashes(text: str, ngram: int = 5) -> np.ndarray:
    """Sorted unique 32-bit hashes (below ``MINHASH_PRIME``) of the word ``ngram``-grams of ``text``.

    A text with fewer words than ``ngram`` has one shingle made of all its words; one without
    words has none.
    """
    hashes = word_hashes(_WORD.findall(text.lower()))
    if hashes.size == 0:
        return np.zeros(0, dtype=np.uint64)
    width = min(ngram, hashes.size)
    combined = hashes[: hashes.size - width + 1].copy()
    for offset in range(1, width):
        combined = combined * _SHINGLE_MULTIPLIER + hashes[offset: hashes.size - width + 1 + offset]
    return np.unique((_mix64(combined) >> np.uint64(32)) % MINHASH_PRIME)


@functools.lru_cache(maxsize=8)
def permutation_parameters(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` column vectors of the ``num_perm`` hash permutations ``(a*x + b) mod p`` for ``seed``."""
    generator = np.random.default_rng(seed)
    multipliers = generator.integers(1, int(MINHASH_PRIME), size=(num_perm, 1), dtype=np.uint64)
    increments = generator.integers(0, int(MINHASH_PRIME), size=(num_perm, 1), dtype=np.uint64)
    multipliers.flags.writeable = False
    increments.flags.writeable = False
    return multipliers, increments


def minhash_signature(shingles: np.ndarray, num_perm: int = 120, seed: int = 1) -> np.ndarray:
    """MinHash signature (``num_perm`` uint32 values) of a set of shingle hashes from ``shingle_hashes``.

    Each value is the minimum of ``(a*x + b) mod p`` over the shingles; with ``x, a, b < p < 2**32``
    the product fits in uint64. Shingles are processed in chunks so memory stays bounded. An empty
    set gets the all-``p`` signature, which ``NearDuplicateIndex`` never matches.
    """
    multipliers, increments = permutation_parameters(num_perm, seed)
    signature = np.full(num_perm, MINHASH_PRIME, dtype=np.uint64)
    for start in range(0, shingles.size, _PERMUTATION_CHUNK):
        chunk = shingles[start: start + _PERMUTATION_CHUNK].astype(np.uint64)
        permuted = (multipliers * chunk + increments) % MINHASH_PRIME
        np.minimum(signature, permuted.min(axis=1), out=signature)
    return signature.astype(np.uint32)


def text_signature(text: str, config: MinHashConfig = MinHashConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes and MinHash signature of one text: the pure per-document half of near dedup."""
    shingles = shingle_hashes(text, config.ngram)
    return shingles, minhash_signature(shingles, config.num_perm, config.seed)


def jaccard(shingles_a: np.ndarray, shingles_b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique shingle-hash arrays (0.0 when both are empty)."""
    union = shingles_a.size + shingles_b.size
    if union == 0:
        return 0.0
    shared = np.intersect1d(shingles_a, shingles_b, assume_unique=True).size
    return shared / (union - shared)


class UnionFind:
    """Disjoint sets over 0..n-1 whose representative is always the smallest member."""

    def __init__(self) -> None:
        self._parent: list[int] = []

    def __len__(self) -> int:
        return len(self._parent)

    def add(self) -> int:
        """Create a new singleton set and return its element."""
        self._parent.append(len(self._parent))
        return len(self._parent) - 1

    def find(self, element: int) -> int:
        """Representative (smallest member) of ``element``'s set, compressing the path walked."""
        root = element
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[element] != root:
            self._parent[element], element = root, self._parent[element]
        return root

    def union(self, first: int, second: int) -> int:
        """Merge two sets; the smaller representative becomes the representative of both."""
        root_first, root_second = self.find(first), self.find(second)
        keep, merged = min(root_first, root_second), max(root_first, root_second)
        self._parent[merged] = keep
        return keep


class NearDuplicateIndex:
    """One pass over MinHash signatures that groups near-duplicates into clusters.

    Documents are numbered in the order they are added. Each band of each signature is looked up
    in that band's buckets; the new document is compared with the bucket's members from other
    clusters and merged with those that pass (Jaccard of shingles >= threshold under ``verify``,
    else every one). A document that merged with a bucket member is not stored in that bucket, so
    exact-duplicate floods keep buckets small. Exactly one document per cluster survives: the
    one added first.
    """

    def __init__(self, config: MinHashConfig = MinHashConfig()):
        self.config = config
        self._clusters = UnionFind()
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(config.bands)]
        self._shingles: list[np.ndarray] = []
        self.candidate_pairs = 0
        self.verified_pairs = 0

    def __len__(self) -> int:
        return len(self._clusters)

    def _similar(self, document: int, other: int) -> bool:
        self.candidate_pairs += 1
        if not self.config.verify:
            return True
        similar = jaccard(self._shingles[document], self._shingles[other]) >= self.config.threshold
        self.verified_pairs += similar
        return similar

    def add(self, signature: np.ndarray, shingles: np.ndarray | None = None) -> int:
        """Add the next document's signature (and shingle hashes, needed under ``verify``); return its number."""
        if signature.shape != (self.config.num_perm,):
            raise ValueError(f"signature has shape {signature.shape}, expected ({self.config.num_perm},)")
        if self.config.verify and shingles is None:
            raise ValueError("MinHashConfig.verify is on: pass the document's shingle hashes to add()")
        document = self._clusters.add()
        if self.config.verify:
            self._shingles.append(shingles)
        if bool((signature == MINHASH_PRIME).all()):
            return document
        rows = self.config.rows
        for band, buckets in enumerate(self._buckets):
            key = signature[band * rows: (band + 1) * rows].tobytes()
            members = buckets.get(key)
            if members is None:
                buckets[key] = [document]
                continue
            root = self._clusters.find(document)
            represented = False
            for other in members:
                if self._clusters.find(other) == root:
                    represented = True
                elif self._similar(document, other):
                    root = self._clusters.union(document, other)
                    represented = True
            if not represented:
                members.append(document)
        return document

    def cluster_of(self, document: int) -> int:
        """The surviving (first-added) document of ``document``'s cluster."""
        return self._clusters.find(document)

    def clusters(self) -> list[int]:
        """Cluster representative of every document, in the order added."""
        return [self._clusters.find(document) for document in range(len(self._clusters))]

    def keep_mask(self) -> list[bool]:
        """True for the documents that survive near dedup (each cluster's first document)."""
        return [representative == document for document, representative in enumerate(self.clusters())]


def near_duplicate_clusters(texts: Iterable[str], config: MinHashConfig = MinHashConfig()) -> list[int]:
    """Cluster representative (index of the surviving text) for every text, in one pass."""
    index = NearDuplicateIndex(config)
    for text in texts:
        shingles, signature = text_signature(text, config)
        index.add(signature, shingles if config.verify else None)
    return index.clusters()


def near_dedup(documents: Iterable[Document], config: MinHashConfig = MinHashConfig()) -> list[Document]:
    """The documents that survive near-duplicate removal, in input order (one per cluster)."""
    kept_documents = list(documents)
    representatives = near_duplicate_clusters((document.text for document in kept_documents), config)
    return [document for position, document in enumerate(kept_documents) if representatives[position] == position]


def _split_units(text: str, unit: Unit) -> list[str]:
    """Split ``text`` into units that concatenate back to ``text``: lines with their newline, or
    paragraphs each followed by its run of blank lines."""
    if unit == "line":
        return text.splitlines(keepends=True)
    if unit == "paragraph":
        pieces = _PARAGRAPH_SPLIT.split(text)
        return [pieces[i] + (pieces[i + 1] if i + 1 < len(pieces) else "") for i in range(0, len(pieces), 2)]
    raise ValueError(f"unit={unit!r}: use 'line' or 'paragraph'")


def _unit_content(unit_text: str, unit: Unit) -> str:
    """What a unit is compared by: a line without its line break, a paragraph without trailing whitespace."""
    return unit_text.rstrip("\r\n") if unit == "line" else unit_text.rstrip()


def unit_key(content: str) -> int:
    """Stable 64-bit key of one line or paragraph's content."""
    return int.from_bytes(hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def unit_keys(text: str, unit: Unit = "line") -> list[int]:
    """Keys of the non-blank lines (or paragraphs) of ``text``, in order, repeats included."""
    keys = []
    for unit_text in _split_units(text, unit):
        content = _unit_content(unit_text, unit)
        if content.strip():
            keys.append(unit_key(content))
    return keys


def count_units(texts: Iterable[str], unit: Unit = "line") -> Counter[int]:
    """How many times each non-blank line (or paragraph) occurs across all ``texts``: the corpus-wide pass."""
    counts: Counter[int] = Counter()
    for text in texts:
        counts.update(unit_keys(text, unit))
    return counts


def drop_frequent_units(text: str, counts: Counter[int], max_count: int = 1, unit: Unit = "line") -> tuple[str, int]:
    """Remove the lines (or paragraphs) of ``text`` seen more than ``max_count`` times corpus-wide.

    Returns the remaining text and how many units were dropped. Blank lines are never dropped.
    """
    kept, dropped = [], 0
    for unit_text in _split_units(text, unit):
        content = _unit_content(unit_text, unit)
        if content.strip() and counts[unit_key(content)] > max_count:
            dropped += 1
        else:
            kept.append(unit_text)
    return "".join(kept), dropped


def remove_boilerplate(documents: list[Document], max_count: int = 1, unit: Unit = "line") -> list[Document]:
    """Drop lines (or paragraphs) occurring more than ``max_count`` times across ``documents``; two passes."""
    counts = count_units((document.text for document in documents), unit)
    return [with_text(document, drop_frequent_units(document.text, counts, max_count, unit)[0]) for document in documents]
