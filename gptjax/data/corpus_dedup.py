"""Corpus-wide dedup over per-document keys, with memory proportional to the number of documents, not bytes.

Exact dedup keeps the first document of every 128-bit key. Near dedup works band by band over LSH band hashes
(one uint64 column per band, read one band at a time): documents sharing a band hash are candidates, and a
candidate joins a cluster only when `similar` (true Jaccard of shingles, recomputed from the texts) says so. The
rule per group of documents sharing a band hash is `gptjax.data.dedup.NearDuplicateIndex`'s: in corpus order,
each document is compared with the group members that represent other clusters. Clusters are kept in an
array-backed union-find whose representative is the smallest (first) document, which is the one that survives.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


def first_occurrences(keys_N2: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Mask of the alive documents whose 128-bit key was not seen at an earlier alive document."""
    keep = np.zeros(len(keys_N2), dtype=bool)
    alive_index = np.flatnonzero(alive)
    if alive_index.size == 0:
        return keep
    keys = np.ascontiguousarray(keys_N2[alive_index]).view(np.dtype((np.void, 16))).ravel()
    _, first = np.unique(keys, return_index=True)
    keep[alive_index[first]] = True
    return keep


class ArrayUnionFind:
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


def cluster_band_group(group: np.ndarray, clusters: ArrayUnionFind, similar: Callable[[int, int], bool]) -> int:
    """Merges the near-duplicates among one band group (ascending indices); returns the comparisons made."""
    representatives = [int(group[0])]
    comparisons = 0
    for member in map(int, group[1:]):
        represented = False
        for other in representatives:
            if clusters.find(other) == clusters.find(member):
                represented = True
            else:
                comparisons += 1
                if similar(member, other):
                    clusters.union(member, other)
                    represented = True
        if not represented:
            representatives.append(member)
    return comparisons


def near_duplicate_roots(n_docs: int, band_columns: Iterable[np.ndarray], alive: np.ndarray,
                         similar: Callable[[int, int], bool]) -> tuple[np.ndarray, dict]:
    """Cluster representative of every document (itself when unclustered or dead) and counters of the work."""
    clusters = ArrayUnionFind(n_docs)
    groups = comparisons = 0
    for column in band_columns:
        for group in candidate_groups(column, alive):
            groups += 1
            comparisons += cluster_band_group(group, clusters, similar)
    return clusters.roots(), {"candidate_groups": groups, "verified_comparisons": comparisons}
