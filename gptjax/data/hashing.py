"""SplitMix64, the one 64-bit mixer of the data modules: MinHash word and shingle hashes, LSH band keys, shuffles.

Every value these produce is written into prepared data or decides which rows a training step reads, so the
constants must never change.
"""
from __future__ import annotations

import numpy as np

GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer over uint64 values: every output bit depends on every input bit."""
    with np.errstate(over="ignore"):
        values = np.asarray(values, dtype=np.uint64)
        values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def splitmix64(values: np.ndarray) -> np.ndarray:
    """One SplitMix64 step (add the golden gamma, then finalize): a well-mixed hash of each uint64 value."""
    with np.errstate(over="ignore"):
        return mix64(np.asarray(values, dtype=np.uint64) + GOLDEN_GAMMA)
