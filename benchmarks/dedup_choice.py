"""Compare datasketch MinHash with gptjax's numpy MinHash on the same planted near-duplicate corpus.

Corpus: the paragraphs (blank-line separated, >= 40 words) of shared/data/english_public_domain,
plus near-duplicate copies of some of them with a few words replaced, deleted or inserted. Both
implementations use word 5-gram shingles, 120 permutations, and the clustering `gptjax prepare` runs
(``gptjax.prepare.dedup.cluster_signatures``: LSH band hashes, 20 bands x 6 rows, band-by-band union-find),
verified by shingle Jaccard as in the pipeline, and unverified so the signatures alone decide.
Truth: connected components of the graph "true Jaccard of 5-gram sets >= 0.8".

Run from the repository root:

    python benchmarks/dedup_choice.py [--data-dir PATH] [--variants 600] [--repeats 3]
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from gptjax.prepare.dedup import MinHashConfig, UnionFind, cluster_signatures, minhash_signature, shingle_hashes  # noqa: E402

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "english_public_domain"
WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
NGRAM = 5
THRESHOLD = 0.8
CONFIG = MinHashConfig(ngram=NGRAM, num_perm=120, bands=20, rows=6, threshold=THRESHOLD, seed=1)


def load_paragraphs(data_dir: Path, min_words: int = 40) -> list[str]:
    """Blank-line separated paragraphs of every .txt file under ``data_dir`` with at least ``min_words`` words."""
    paragraphs = []
    for path in sorted(data_dir.rglob("*.txt")):
        text = path.read_bytes().decode("utf-8", "replace")
        paragraphs += [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.split()) >= min_words]
    return list(dict.fromkeys(paragraphs))


def plant_near_duplicates(originals: list[str], n_variants: int, seed: int) -> list[str]:
    """Copies of randomly chosen originals with 0.2-6% of their words replaced, deleted or inserted.

    That range puts the true 5-gram Jaccard of most copies between about 0.6 and 1.0, on both
    sides of the 0.8 threshold.
    """
    generator = np.random.default_rng(seed)
    vocabulary = sorted({word for text in originals for word in text.split()})
    variants = []
    for _ in range(n_variants):
        words = originals[int(generator.integers(len(originals)))].split()
        n_edits = max(1, int(round(len(words) * generator.uniform(0.002, 0.06))))
        for _ in range(n_edits):
            position = int(generator.integers(len(words)))
            action = generator.integers(3)
            if action == 0:
                words[position] = vocabulary[int(generator.integers(len(vocabulary)))]
            elif action == 1 and len(words) > 1:
                del words[position]
            else:
                words.insert(position, vocabulary[int(generator.integers(len(vocabulary)))])
        variants.append(" ".join(words))
    return variants


def shingle_strings(text: str) -> list[str]:
    """Word 5-grams of the lowercased text, as strings (what datasketch hashes)."""
    words = WORD.findall(text.lower())
    if len(words) < NGRAM:
        return [" ".join(words)] if words else []
    return [" ".join(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)]


def true_components(texts: list[str]) -> list[int]:
    """Smallest index of each text's component in the graph of pairs with exact Jaccard >= threshold."""
    sets = [set(shingle_strings(text)) for text in texts]
    postings = defaultdict(list)
    for index, shingles in enumerate(sets):
        for shingle in shingles:
            postings[shingle].append(index)
    shared = Counter()
    for members in postings.values():
        for position, first in enumerate(members):
            for second in members[position + 1:]:
                shared[first, second] += 1
    components = UnionFind(len(texts))
    for (first, second), overlap in shared.items():
        if overlap / (len(sets[first]) + len(sets[second]) - overlap) >= THRESHOLD:
            components.union(first, second)
    return [components.find(index) for index in range(len(texts))]


def pair_scores(predicted: list[int], truth: list[int]) -> tuple[float, float]:
    """Pairwise precision and recall of the relation "in the same cluster"."""
    def pairs(labels: list[int]) -> set[tuple[int, int]]:
        groups = defaultdict(list)
        for index, label in enumerate(labels):
            groups[label].append(index)
        return {(a, b) for members in groups.values() for i, a in enumerate(members) for b in members[i + 1:]}

    predicted_pairs, true_pairs = pairs(predicted), pairs(truth)
    hits = len(predicted_pairs & true_pairs)
    return hits / max(len(predicted_pairs), 1), hits / max(len(true_pairs), 1)


def numpy_signatures(texts: list[str], seed: int = CONFIG.seed) -> list[np.ndarray]:
    return [minhash_signature(shingle_hashes(text, NGRAM), CONFIG.num_perm, seed) for text in texts]


def datasketch_minhashes(texts: list[str], seed: int = CONFIG.seed) -> list:
    from datasketch import MinHash

    minhashes = []
    for text in texts:
        minhash = MinHash(num_perm=CONFIG.num_perm, seed=seed)
        minhash.update_batch([shingle.encode("utf-8") for shingle in shingle_strings(text)])
        minhashes.append(minhash)
    return minhashes


def datasketch_lsh_clusters(minhashes: list) -> tuple[list[int], float]:
    """Clusters from datasketch's own MinHashLSH (same 20x6 banding), candidates merged by union-find."""
    from datasketch import MinHashLSH

    started = time.perf_counter()
    lsh = MinHashLSH(num_perm=CONFIG.num_perm, params=(CONFIG.bands, CONFIG.rows))
    components = UnionFind(len(minhashes))
    for index, minhash in enumerate(minhashes):
        for other in lsh.query(minhash):
            components.union(index, other)
        lsh.insert(index, minhash)
    return [components.find(index) for index in range(len(minhashes))], time.perf_counter() - started


def best_time(function, texts: list[str], repeats: int) -> tuple[float, list[np.ndarray]]:
    timings, result = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(texts)
        timings.append(time.perf_counter() - started)
    return min(timings), result


def clusters_from(signatures: list[np.ndarray], shingles: list[np.ndarray] | None) -> tuple[list[int], float]:
    """Clusters from the pipeline's clustering; with ``shingles``, candidates are verified by true Jaccard."""
    started = time.perf_counter()
    roots, _ = cluster_signatures(signatures, shingles, CONFIG)
    return roots.tolist(), time.perf_counter() - started


def estimate_error(signatures: list[np.ndarray], texts: list[str], pairs: list[tuple[int, int]]) -> float:
    """Mean |estimated - true| Jaccard over ``pairs``."""
    errors = []
    for first, second in pairs:
        a, b = set(shingle_strings(texts[first])), set(shingle_strings(texts[second]))
        true = len(a & b) / len(a | b)
        errors.append(abs(float(np.mean(signatures[first] == signatures[second])) - true))
    return float(np.mean(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--variants", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5, help="MinHash seeds over which quality is averaged")
    args = parser.parse_args()

    originals = load_paragraphs(args.data_dir)
    texts = originals + plant_near_duplicates(originals, args.variants, seed=0)
    truth = true_components(texts)
    n_words = sum(len(text.split()) for text in texts)
    print(f"corpus: {len(originals)} paragraphs + {args.variants} planted variants = {len(texts)} texts, "
          f"{n_words} words")

    rng = np.random.default_rng(1)
    duplicate_pairs = [(truth[i], i) for i in range(len(texts)) if truth[i] != i]
    random_pairs = [tuple(sorted(rng.choice(len(texts), 2, replace=False).tolist())) for _ in range(300)]
    shingles = [shingle_hashes(text, NGRAM) for text in texts]
    numpy_seconds, numpy_sigs = best_time(numpy_signatures, texts, args.repeats)
    datasketch_seconds, minhashes = best_time(datasketch_minhashes, texts, args.repeats)
    datasketch_sigs = [minhash.hashvalues.astype(np.uint32) for minhash in minhashes]
    for name, seconds, signatures in (
        ("numpy (gptjax)", numpy_seconds, numpy_sigs),
        ("datasketch", datasketch_seconds, datasketch_sigs),
    ):
        print(
            f"{name}: signatures {seconds:.3f} s ({1e6 * seconds / len(texts):.0f} us/doc); "
            f"mean |J_est - J| on {len(duplicate_pairs)} planted pairs "
            f"{estimate_error(signatures, texts, duplicate_pairs):.4f}, "
            f"on 300 random pairs {estimate_error(signatures, texts, random_pairs):.4f}"
        )
        for label, verify_with in (("unverified", None), ("verified", shingles)):
            predicted, cluster_seconds = clusters_from(signatures, verify_with)
            precision, recall = pair_scores(predicted, truth)
            print(
                f"  cluster_signatures {label}: {cluster_seconds:.3f} s, pair precision {precision:.4f}, "
                f"recall {recall:.4f}, "
                f"{sum(p == i for i, p in enumerate(predicted))} kept "
                f"(truth {sum(t == i for i, t in enumerate(truth))})"
            )
    predicted, lsh_seconds = datasketch_lsh_clusters(minhashes)
    precision, recall = pair_scores(predicted, truth)
    print(f"  datasketch MinHashLSH unverified: {lsh_seconds:.3f} s, pair precision {precision:.4f}, "
          f"recall {recall:.4f}")

    print(
        f"quality averaged over MinHash seeds 1..{args.seeds} "
        "(verified precision / recall, unverified precision / recall, J error on planted pairs):"
    )
    for name, signer in (
        ("numpy (gptjax)", numpy_signatures),
        ("datasketch", lambda texts, seed: [m.hashvalues.astype(np.uint32) for m in datasketch_minhashes(texts, seed)]),
    ):
        scores = []
        for seed in range(1, args.seeds + 1):
            signatures = signer(texts, seed)
            verified = pair_scores(clusters_from(signatures, shingles)[0], truth)
            unverified = pair_scores(clusters_from(signatures, None)[0], truth)
            scores.append((*verified, *unverified, estimate_error(signatures, texts, duplicate_pairs)))
        mean = np.mean(scores, axis=0)
        worst_recall = min(score[1] for score in scores)
        print(
            f"  {name}: verified {mean[0]:.4f} / {mean[1]:.4f} (worst recall {worst_recall:.4f}), "
            f"unverified {mean[2]:.4f} / {mean[3]:.4f}, J error {mean[4]:.4f}"
        )

if __name__ == "__main__":
    main()
