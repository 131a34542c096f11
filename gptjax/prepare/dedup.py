"""Deduplication: exact (normalized-text hash), near-duplicate (MinHash + LSH + union-find), boilerplate lines.

Everything computed per document (exact keys, shingle hashes, MinHash signatures, LSH band hashes, line keys) is
a pure function of that document's text and is identical in every process, so it runs on parallel workers. Only
clustering sees the whole corpus: `first_occurrences` over exact keys, and `near_duplicate_roots` band by band over
band-hash columns (one uint64 per document and band), verifying each candidate pair with `similar` (the Jaccard
similarity of the two shingle sets). Its memory is a few arrays per document, never the corpus's bytes; `gptjax prepare`
runs it over files, `near_duplicate_clusters` over texts in memory. MinHash is a vectorized
numpy implementation: each word is hashed once (CRC-32 in C), shingle hashes are combined from word hashes with
array arithmetic, and the ``num_perm`` permutations are ``(a*x + b) mod p`` over uint64, reduced without division
(`mod_prime`; see benchmarks/results/dedup_choice.md for why not datasketch).
"""
from __future__ import annotations

import functools
import hashlib
import re
import zlib
from collections import Counter
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gptjax.data.hashing import mix64
from gptjax.errors import GptjaxError
from gptjax.prepare.documents import Document, with_text

Unit = Literal["line", "paragraph"]

MINHASH_PRIME = np.uint64(4294967291)
_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_PARAGRAPH_SPLIT = re.compile(r"(\n[ \t\r\f\v]*\n\s*)")
_SHINGLE_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_PERMUTATION_CHUNK = 4096
_LOW_32_BITS = np.uint64(0xFFFFFFFF)
_TWO_POW_32_MOD_PRIME = np.uint64(2**32 - int(MINHASH_PRIME))


def exact_normal_form(text: str) -> str:
    """The text exact dedup compares: lowercased, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(text.lower().split())


def exact_key(text: str) -> bytes:
    """16-byte hash of ``exact_normal_form(text)``; equal keys mean exact duplicates."""
    return hashlib.blake2b(exact_normal_form(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def exact_keys(texts: list[str]) -> np.ndarray:
    """The exact keys of `texts` as a uint64 [n, 2] array."""
    keys = np.frombuffer(b"".join(exact_key(text) for text in texts), dtype=np.uint64)
    return keys.reshape(len(texts), 2)


def first_occurrences(keys_N2: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Mask of the alive documents whose 128-bit key was not seen at an earlier alive document."""
    keep = np.zeros(len(keys_N2), dtype=bool)
    alive_index = np.flatnonzero(alive)
    if alive_index.size == 0:
        return keep
    _, first = np.unique(_as_void(keys_N2[alive_index]), return_index=True)
    keep[alive_index[first]] = True
    return keep


def exact_roots(keys_N2: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """For every document the first alive document with its key (itself when dead or first)."""
    roots = np.arange(len(keys_N2), dtype=np.int64)
    alive_index = np.flatnonzero(alive)
    if alive_index.size:
        _, first, inverse = np.unique(_as_void(keys_N2[alive_index]), return_index=True, return_inverse=True)
        roots[alive_index] = alive_index[first[inverse.ravel()]]
    return roots


def _as_void(keys_N2: np.ndarray) -> np.ndarray:
    """Each 16-byte key as one opaque element, so np.unique compares whole keys."""
    return np.ascontiguousarray(keys_N2).view(np.dtype((np.void, 16))).ravel()


def exact_dedup(documents: Iterable[Document]) -> list[Document]:
    """The documents whose normalized text was not seen before, in order (the first copy survives)."""
    kept_documents = list(documents)
    keys = exact_keys([document.text for document in kept_documents])
    keep = first_occurrences(keys, np.ones(len(kept_documents), dtype=bool))
    return [document for document, kept in zip(kept_documents, keep) if kept]


@dataclass(frozen=True)
class MinHashConfig:
    """Near-duplicate settings.

    Shingles are word ``ngram``-grams of the lowercased text. ``bands`` x ``rows`` signature values
    (at most ``num_perm``) feed LSH; a pair sharing one band is a candidate. With ``verify`` a
    candidate pair only joins a cluster when the Jaccard similarity of its shingle sets is at least
    ``threshold``; without it every candidate pair joins.

    The defaults are chosen for lightly edited copies (benchmarks/prepare.py --mode near-recall, on the planted
    corpora of gptjax.testing.planted): with 3-8% of words substituted, deleted or inserted a copy keeps a word
    3-gram Jaccard of about 0.6-0.8 to its original (word 5-grams: 0.45-0.7), paragraph reorders keep 0.6 or more
    and added header/footer lines 0.8 or more, while distinct documents sharing topic, boilerplate or a quoted
    paragraph stay below 0.2. 30 bands of 4 rows make a pair at Jaccard 0.6 a candidate with probability 0.985,
    one at 0.7 with 0.9997 and one at 0.2 with 0.047; verification at 0.5 then keeps precision. At 0.5 a document
    that makes up half or more of a longer one (a paragraph appended, header and footer lines added) is its
    near-duplicate.
    """

    ngram: int = 3
    num_perm: int = 120
    bands: int = 30
    rows: int = 4
    threshold: float = 0.5
    verify: bool = True
    seed: int = 1

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.num_perm < 1 or self.bands < 1 or self.rows < 1:
            raise GptjaxError("near-dedup settings: ngram, num_perm, bands and rows must all be >= 1")
        if self.bands * self.rows > self.num_perm:
            raise GptjaxError(f"near-dedup settings use bands*rows={self.bands * self.rows} signature values but "
                              f"num_perm={self.num_perm}; raise num_perm or lower bands")
        if not 0.0 < self.threshold <= 1.0:
            raise GptjaxError(f"near-dedup threshold (jaccard) {self.threshold} must lie in (0, 1]")


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that LSH with ``bands`` x ``rows`` makes a pair of this Jaccard similarity a candidate."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def word_hashes(words: list[str]) -> np.ndarray:
    """Stable 64-bit hash of each word (the same in every process): CRC-32 and byte length, scrambled.

    Words must not contain NUL (regex words never do); all are encoded in one call.
    """
    if not words:
        return np.zeros(0, dtype=np.uint64)
    encoded = "\x00".join(words).encode("utf-8", "surrogatepass").split(b"\x00")
    checksums = np.fromiter(map(zlib.crc32, encoded), dtype=np.uint64, count=len(encoded))
    lengths = np.fromiter(map(len, encoded), dtype=np.uint64, count=len(encoded))
    return mix64(checksums | (lengths << np.uint64(32)))


def shingle_hashes(text: str, ngram: int = MinHashConfig.ngram) -> np.ndarray:
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
    return np.unique((mix64(combined) >> np.uint64(32)) % MINHASH_PRIME)


@functools.lru_cache(maxsize=8)
def permutation_parameters(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` column vectors of the ``num_perm`` hash permutations ``(a*x + b) mod p`` for ``seed``."""
    generator = np.random.default_rng(seed)
    multipliers = generator.integers(1, int(MINHASH_PRIME), size=(num_perm, 1), dtype=np.uint64)
    increments = generator.integers(0, int(MINHASH_PRIME), size=(num_perm, 1), dtype=np.uint64)
    multipliers.flags.writeable = False
    increments.flags.writeable = False
    return multipliers, increments


def mod_prime(values: np.ndarray) -> np.ndarray:
    """``values % MINHASH_PRIME`` of a uint64 array, computed in place without division (about 1.4x faster).

    As ``2**32 = p + 5``, folding the high 32 bits into the low ones times 5 keeps the residue; two folds leave a
    value below ``2p`` and one conditional subtraction (a wrapped difference is larger) finishes.
    """
    for _ in range(2):
        high = values >> np.uint64(32)
        high *= _TWO_POW_32_MOD_PRIME
        values &= _LOW_32_BITS
        values += high
    return np.minimum(values, values - MINHASH_PRIME, out=values)


def minhash_signature(shingles: np.ndarray, num_perm: int = MinHashConfig.num_perm,
                      seed: int = MinHashConfig.seed) -> np.ndarray:
    """MinHash signature (``num_perm`` uint32 values) of a set of shingle hashes from ``shingle_hashes``.

    Each value is the minimum of ``(a*x + b) mod p`` over the shingles; with ``x, a, b < p < 2**32``
    the product fits in uint64. Shingles are processed in chunks so memory stays bounded. An empty
    set gets the all-``p`` signature, which ``cluster_signatures`` never matches.
    """
    multipliers, increments = permutation_parameters(num_perm, seed)
    signature = np.full(num_perm, MINHASH_PRIME, dtype=np.uint64)
    for start in range(0, shingles.size, _PERMUTATION_CHUNK):
        chunk = shingles[start: start + _PERMUTATION_CHUNK].astype(np.uint64)
        permuted = mod_prime(multipliers * chunk + increments)
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


def band_hashes(signatures_NP: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit LSH key per band of each MinHash signature: uint64 [..., bands] from [..., num_perm]."""
    values = signatures_NP[..., : bands * rows].astype(np.uint64).reshape(*signatures_NP.shape[:-1], bands, rows)
    combined = np.zeros(values.shape[:-1], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for row in range(rows):
            combined = combined * np.uint64(0x100000001B3) + values[..., row] + np.uint64(row + 1)
    return mix64(combined)


class UnionFind:
    """Disjoint sets over 0..n-1 in an int64 array; the representative is always the smallest member."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, element: int) -> int:
        parent = self.parent
        while parent[element] != element:
            parent[element] = parent[parent[element]]
            element = int(parent[element])
        return element

    def union(self, first: int, second: int) -> int:
        """Merges two sets; the smaller representative becomes the representative of both."""
        root_first, root_second = self.find(first), self.find(second)
        keep, merged = min(root_first, root_second), max(root_first, root_second)
        self.parent[merged] = keep
        return keep

    def roots(self) -> np.ndarray:
        """Representative of every element (pointer jumping until every element points at its root)."""
        roots = self.parent.copy()
        while True:
            jumped = roots[roots]
            if np.array_equal(jumped, roots):
                return roots
            roots = jumped


def candidate_groups(band_column: np.ndarray, alive: np.ndarray) -> Iterable[np.ndarray]:
    """Ascending indices of alive documents that share a band hash, one array per hash shared by two or more."""
    alive_index = np.flatnonzero(alive)
    if alive_index.size < 2:
        return
    hashes = band_column[alive_index]
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    boundaries = np.flatnonzero(sorted_hashes[1:] != sorted_hashes[:-1]) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(order)]])
    for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        yield alive_index[order[start:end]]


def group_candidate_pairs(group: np.ndarray) -> Iterable[tuple[int, int]]:
    """The pairs of one band group (ascending indices) that near dedup verifies: every member with the group's
    first (a star) and with the member before it (a path), so a flood of copies costs linear work.

    Near-duplicates are the connected components of the verified pairs over all bands, a pure function of the
    corpus: any runner (union-find here, label propagation in Beam) that verifies these pairs finds the same
    clusters. Pairs are (smaller, larger)."""
    members = [int(member) for member in group]
    for position in range(1, len(members)):
        yield members[0], members[position]
        if position > 1:
            yield members[position - 1], members[position]


def cluster_band_group(group: np.ndarray, clusters: UnionFind, similar: Callable[[int, int], bool]) -> int:
    """Merges the verified pairs of one band group into `clusters`; returns the comparisons made (a pair whose
    documents are already in one cluster is skipped: it cannot change the components)."""
    comparisons = 0
    for first, second in group_candidate_pairs(group):
        if clusters.find(first) != clusters.find(second):
            comparisons += 1
            if similar(first, second):
                clusters.union(first, second)
    return comparisons


def near_duplicate_roots(n_docs: int, band_columns: Iterable[np.ndarray], alive: np.ndarray,
                         similar: Callable[[int, int], bool]) -> tuple[np.ndarray, dict[str, int]]:
    """Cluster representative (first member) of every document, itself when unclustered or dead, and counters of
    the work (`candidate_groups`, `verified_comparisons`). `band_columns` yields one uint64 [n_docs] column per band."""
    clusters = UnionFind(n_docs)
    groups = comparisons = 0
    for column in band_columns:
        for group in candidate_groups(column, alive):
            groups += 1
            comparisons += cluster_band_group(group, clusters, similar)
    return clusters.roots(), {"candidate_groups": groups, "verified_comparisons": comparisons}


def cluster_signatures(signatures: list[np.ndarray], shingles: list[np.ndarray] | None,
                       config: MinHashConfig = MinHashConfig()) -> tuple[np.ndarray, dict[str, int]]:
    """`near_duplicate_roots` over in-memory signatures; candidates verified by shingle Jaccard unless `shingles`
    is None. Documents without words (the all-p signature) are never near-duplicates."""
    n_docs = len(signatures)
    if n_docs == 0:
        return np.zeros(0, np.int64), {"candidate_groups": 0, "verified_comparisons": 0}
    signatures_NP = np.stack(signatures)
    alive = ~(signatures_NP == MINHASH_PRIME).all(axis=1)
    columns_BN = band_hashes(signatures_NP, config.bands, config.rows).T

    def similar(first: int, second: int) -> bool:
        return shingles is None or jaccard(shingles[first], shingles[second]) >= config.threshold

    return near_duplicate_roots(n_docs, iter(columns_BN), alive, similar)


def near_duplicate_clusters(texts: Iterable[str], config: MinHashConfig = MinHashConfig()) -> list[int]:
    """Cluster representative (index of the surviving text) for every text."""
    pairs = [text_signature(text, config) for text in texts]
    shingles, signatures = [pair[0] for pair in pairs], [pair[1] for pair in pairs]
    roots, _ = cluster_signatures(signatures, shingles if config.verify else None, config)
    return roots.tolist()


def near_dedup(documents: Iterable[Document], config: MinHashConfig = MinHashConfig()) -> list[Document]:
    """The documents that survive near-duplicate removal, in input order (one per cluster)."""
    kept_documents = list(documents)
    representatives = near_duplicate_clusters([document.text for document in kept_documents], config)
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


def drop_units(text: str, frequent_keys: Container[int], unit: Unit = "line") -> tuple[str, int]:
    """`text` without its lines (or paragraphs) whose keys are in `frequent_keys`, and how many were dropped.

    Blank lines are never dropped."""
    kept, dropped = [], 0
    for unit_text in _split_units(text, unit):
        content = _unit_content(unit_text, unit)
        if content.strip() and unit_key(content) in frequent_keys:
            dropped += 1
        else:
            kept.append(unit_text)
    return "".join(kept), dropped


def frequent_keys(counts: Counter[int], max_count: int) -> frozenset[int]:
    """The unit keys counted more than `max_count` times."""
    return frozenset(key for key, count in counts.items() if count > max_count)


def drop_frequent_units(text: str, counts: Counter[int], max_count: int = 1, unit: Unit = "line") -> tuple[str, int]:
    """Remove the lines (or paragraphs) of ``text`` seen more than ``max_count`` times corpus-wide.

    Returns the remaining text and how many units were dropped. Blank lines are never dropped.
    """
    return drop_units(text, frequent_keys(counts, max_count), unit)


def remove_boilerplate(documents: list[Document], max_count: int = 1, unit: Unit = "line") -> list[Document]:
    """Drop lines (or paragraphs) occurring more than ``max_count`` times across ``documents``; two passes."""
    frequent = frequent_keys(count_units((document.text for document in documents), unit), max_count)
    return [with_text(document, drop_units(document.text, frequent, unit)[0]) for document in documents]
