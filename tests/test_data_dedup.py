"""Tests for gptjax.prepare.dedup: exact, near-duplicate (measured precision/recall on planted copies) and line dedup;
and for gptjax.testing.planted, the planted-copy corpora those measurements use."""
import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from gptjax.config import DataConfig, PrepareConfig
from gptjax.errors import GptjaxError
from gptjax.prepare.dedup import (
    MINHASH_PRIME,
    MinHashConfig,
    UnionFind,
    candidate_probability,
    cluster_signatures,
    count_units,
    drop_frequent_units,
    exact_dedup,
    exact_key,
    jaccard,
    minhash_signature,
    mod_prime,
    near_dedup,
    near_duplicate_clusters,
    remove_boilerplate,
    shingle_hashes,
    text_signature,
    unit_keys,
)
from gptjax.prepare.documents import make_document
from gptjax.prepare.pipeline import run_pipeline
from gptjax.prepare.readers import read_documents
from gptjax.prepare.stages import minhash_config
from gptjax.testing import planted

FIXTURES = Path(__file__).parent / "fixtures" / "data" / "dedup"
WEB_FIXTURES = Path(__file__).parent / "fixtures" / "dedup_web"
REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_INAUGURAL = REPO_ROOT / "gptjax" / "data" / "bundled" / "english" / "inaugural"
PARAGRAPHS = [
    json.loads(line)["text"]
    for line in (FIXTURES / "inaugural_paragraphs.jsonl").read_text(encoding="utf-8").splitlines()
]
DEFAULTS = MinHashConfig()


def plant_near_duplicates(
    originals: list[str], n_variants: int, edit_range: tuple[float, float], seed: int
) -> list[str]:
    """Copies of random originals with a share of words (drawn from ``edit_range``, at least one word) replaced,
    deleted or inserted."""
    generator = np.random.default_rng(seed)
    vocabulary = sorted({word for text in originals for word in text.split()})
    return [planted.edit_words(originals[int(generator.integers(len(originals)))], "mixed",
                               float(generator.uniform(*edit_range)), vocabulary, generator)
            for _ in range(n_variants)]


def true_shingles(text: str, n: int = DEFAULTS.ngram) -> set[tuple[str, ...]]:
    """Word n-grams as tuples of strings: an implementation-independent ground truth."""
    import re

    words = re.findall(r"[^\W_]+(?:['’\-][^\W_]+)*", text.lower())
    return {tuple(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))} if words else set()


def true_clusters(texts: list[str], threshold: float = DEFAULTS.threshold) -> list[int]:
    """Smallest member of each text's component in the graph of pairs with true Jaccard >= threshold."""
    sets = [true_shingles(text) for text in texts]
    components = UnionFind(len(texts))
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            overlap = len(sets[i] & sets[j])
            if overlap and overlap / len(sets[i] | sets[j]) >= threshold:
                components.union(i, j)
    return [components.find(i) for i in range(len(texts))]


def same_cluster_pairs(labels: list[int]) -> set[tuple[int, int]]:
    groups = defaultdict(list)
    for index, label in enumerate(labels):
        groups[label].append(index)
    return {(a, b) for members in groups.values() for k, a in enumerate(members) for b in members[k + 1:]}


def precision_recall(predicted: list[int], truth: list[int]) -> tuple[float, float]:
    predicted_pairs, true_pairs = same_cluster_pairs(predicted), same_cluster_pairs(truth)
    assert true_pairs, "the planted corpus must contain duplicates"
    hits = len(predicted_pairs & true_pairs)
    return (hits / len(predicted_pairs) if predicted_pairs else 1.0), hits / len(true_pairs)


@pytest.fixture(scope="module")
def clear_corpus():
    texts = PARAGRAPHS + plant_near_duplicates(PARAGRAPHS, 60, (0.0, 0.015), seed=1)
    return texts, true_clusters(texts)


@pytest.fixture(scope="module")
def borderline_corpus():
    texts = PARAGRAPHS + plant_near_duplicates(PARAGRAPHS, 120, (0.03, 0.2), seed=2)
    return texts, true_clusters(texts)


def test_exact_key_ignores_case_and_whitespace_only():
    assert exact_key("Hello   World\n") == exact_key(" hello world")
    assert exact_key("Hello World") != exact_key("Hello, World")


def test_exact_dedup_finds_every_planted_copy_and_nothing_else():
    generator = np.random.default_rng(0)
    copies_of = generator.choice(len(PARAGRAPHS), size=30, replace=True)
    variants = [
        PARAGRAPHS[i].upper().replace(" ", "  \n ") if k % 2 else "  " + PARAGRAPHS[i] + "\n"
        for k, i in enumerate(copies_of)
    ]
    documents = [make_document(text, f"doc:{k}") for k, text in enumerate(PARAGRAPHS + variants)]
    kept = list(exact_dedup(documents))
    assert [doc.source for doc in kept] == [f"doc:{k}" for k in range(len(PARAGRAPHS))]


def test_shingle_hashes_match_distinct_ngrams():
    for text in PARAGRAPHS[:20]:
        for n in (3, 5):
            hashes = shingle_hashes(text, n)
            assert hashes.size == len(true_shingles(text, n))
            assert np.all(np.diff(hashes.astype(np.int64)) > 0)
            assert int(hashes.max()) < int(MINHASH_PRIME)
    assert shingle_hashes("too short", 5).size == 1
    assert shingle_hashes("  ... !!", 5).size == 0


def test_jaccard_of_hash_sets_equals_true_jaccard():
    variants = plant_near_duplicates(PARAGRAPHS[:10], 10, (0.01, 0.05), seed=3)
    for original in PARAGRAPHS[:10]:
        for variant in variants:
            a, b = true_shingles(original), true_shingles(variant)
            assert jaccard(shingle_hashes(original), shingle_hashes(variant)) == pytest.approx(len(a & b) / len(a | b))


def test_signature_estimates_jaccard():
    originals = PARAGRAPHS[:40]
    variants = plant_near_duplicates(originals, 40, (0.0, 0.04), seed=4)
    errors = []
    for variant in variants:
        shingles_v, signature_v = text_signature(variant)
        best = max(originals, key=lambda original: jaccard(shingle_hashes(original), shingles_v))
        shingles_o, signature_o = text_signature(best)
        errors.append(abs(float(np.mean(signature_o == signature_v)) - jaccard(shingles_o, shingles_v)))
    assert np.mean(errors) < 0.05
    assert max(errors) < 0.15


def test_signature_is_pure_and_identical_across_processes():
    text = PARAGRAPHS[0]
    signature = text_signature(text)[1]
    assert np.array_equal(signature, text_signature(text)[1])
    code = (
        "import sys, json; from gptjax.prepare.dedup import text_signature; "
        "print(json.dumps(text_signature(sys.stdin.read())[1].tolist()))"
    )
    environment = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], input=text, capture_output=True, text=True, env=environment, check=True,
        timeout=60,
    )
    assert json.loads(result.stdout) == signature.tolist()


def test_near_dedup_on_clear_planted_duplicates(clear_corpus):
    texts, truth = clear_corpus
    assert sum(label != index for index, label in enumerate(truth)) >= 50
    for verify in (True, False):
        predicted = near_duplicate_clusters(texts, MinHashConfig(verify=verify))
        precision, recall = precision_recall(predicted, truth)
        assert precision >= 0.95, (verify, precision, recall)
        assert recall >= 0.9, (verify, precision, recall)


def test_near_dedup_on_borderline_planted_duplicates(borderline_corpus):
    texts, truth = borderline_corpus
    true_pairs = same_cluster_pairs(truth)
    planted_pairs = {(label, index) for index, label in enumerate(truth) if label != index}
    assert len(true_pairs) >= 20 and len(planted_pairs) < 120, "variants must fall on both sides of the threshold"
    precision, recall = precision_recall(near_duplicate_clusters(texts, MinHashConfig(verify=True)), truth)
    assert precision >= 0.95 and recall >= 0.9, (precision, recall)
    unverified_precision, unverified_recall = precision_recall(
        near_duplicate_clusters(texts, MinHashConfig(verify=False)), truth
    )
    assert unverified_recall >= 0.95
    assert unverified_precision <= precision


def test_exactly_one_document_per_cluster_survives_the_smallest_index(clear_corpus):
    texts, _ = clear_corpus
    representatives = near_duplicate_clusters(texts)
    members = defaultdict(list)
    for index, representative in enumerate(representatives):
        members[representative].append(index)
    assert all(representative == min(group) for representative, group in members.items())
    documents = [make_document(text, f"doc:{index}") for index, text in enumerate(texts)]
    survivors = near_dedup(documents)
    assert [doc.source for doc in survivors] == [f"doc:{representative}" for representative in sorted(members)]


def test_fuzzy_license_fixture_keeps_one_of_the_mit_licenses():
    names = ["pytorch_license.txt", "rails_mit_license.txt", "react_mit_license.txt"]
    texts = [(FIXTURES / "documents_with_fuzzy_duplicates" / name).read_text(encoding="utf-8") for name in names]
    assert near_duplicate_clusters(texts) == [0, 1, 1]
    assert near_duplicate_clusters(texts, MinHashConfig(num_perm=100, bands=10, rows=10)) == [0, 1, 1]


def test_exact_duplicate_fixture_with_cs336_settings():
    texts = [(FIXTURES / "documents_with_line_duplicates" / f"doc{i}.txt").read_text(encoding="utf-8")
             for i in range(1, 6)]
    config = MinHashConfig(ngram=5, num_perm=100, bands=10, rows=10, threshold=0.8)
    representatives = near_duplicate_clusters(texts, config)
    assert [representative == index for index, representative in enumerate(representatives)] == [
        True, False, True, True, True]


def test_identical_flood_is_one_cluster_and_buckets_stay_small():
    config = MinHashConfig()
    shingles, signature = text_signature(PARAGRAPHS[0], config)
    other_shingles, other_signature = text_signature(PARAGRAPHS[1], config)
    roots, counters = cluster_signatures([signature] * 2000 + [other_signature], [shingles] * 2000 + [other_shingles],
                                         config)
    assert (roots == np.arange(len(roots))).tolist() == [True] + [False] * 1999 + [True]
    assert counters["verified_comparisons"] == 1999
    assert len(roots) == 2001


def test_documents_without_words_are_never_near_duplicates():
    representatives = near_duplicate_clusters(["", "...", "!!!", PARAGRAPHS[0], PARAGRAPHS[0]])
    assert representatives == [0, 1, 2, 3, 3]
    assert np.all(minhash_signature(np.zeros(0, dtype=np.uint64)) == MINHASH_PRIME)


def test_config_and_input_validation():
    with pytest.raises(GptjaxError, match="num_perm"):
        MinHashConfig(num_perm=64, bands=20, rows=6)
    with pytest.raises(GptjaxError, match="threshold"):
        MinHashConfig(threshold=0.0)


def test_candidate_probability_s_curve():
    assert candidate_probability(0.8, 20, 6) > 0.99
    assert candidate_probability(0.3, 20, 6) < 0.02
    assert candidate_probability(1.0, 20, 6) == 1.0


def test_union_find_keeps_smallest_representative():
    sets = UnionFind(6)
    sets.union(5, 3)
    sets.union(4, 5)
    sets.union(1, 4)
    assert [sets.find(i) for i in range(6)] == [0, 1, 2, 1, 1, 1]
    assert sets.roots().tolist() == [0, 1, 2, 1, 1, 1]


def test_line_dedup_reproduces_cs336_expected_output():
    documents = [
        make_document((FIXTURES / "documents_with_line_duplicates" / f"doc{i}.txt").read_text(encoding="utf-8"),
                      f"doc{i}")
        for i in range(1, 6)
    ]
    cleaned = remove_boilerplate(documents, max_count=1, unit="line")
    expected = [(FIXTURES / "documents_line_deduplicated" / f"doc{i}.txt").read_text(encoding="utf-8")
                for i in range(1, 6)]
    assert [document.text for document in cleaned] == expected
    assert [document.doc_id for document in cleaned] == [document.doc_id for document in documents]


def test_line_dedup_threshold_k():
    texts = ["menu\nstory one\n", "menu\nstory two\n", "menu\nfooter\nstory three\n", "footer\nstory four"]
    counts = count_units(texts)
    assert counts[unit_keys("menu")[0]] == 3
    assert drop_frequent_units(texts[2], counts, max_count=2) == ("footer\nstory three\n", 1)
    assert drop_frequent_units(texts[2], counts, max_count=1) == ("story three\n", 2)
    assert drop_frequent_units(texts[2], counts, max_count=3) == (texts[2], 0)
    assert drop_frequent_units(texts[3], counts, max_count=1) == ("story four", 1)


def test_blank_lines_are_never_dropped_and_line_breaks_are_kept():
    texts = ["a\r\n\r\nshared\r\nb\n", "shared\n\n\nc"]
    counts = count_units(texts)
    assert drop_frequent_units(texts[0], counts) == ("a\r\n\r\nb\n", 1)
    assert drop_frequent_units(texts[1], counts) == ("\n\nc", 1)


def test_paragraph_dedup():
    boiler = "Subscribe to our newsletter.\nFollow us."
    texts = [f"Story {i} begins.\nIt goes on.\n\n{boiler}\n\n\nThe end {i}." for i in range(3)]
    counts = count_units(texts, "paragraph")
    assert Counter(counts.values()) == Counter({1: 6, 3: 1})
    cleaned, dropped = drop_frequent_units(texts[0], counts, max_count=2, unit="paragraph")
    assert (cleaned, dropped) == ("Story 0 begins.\nIt goes on.\n\nThe end 0.", 1)
    with pytest.raises(ValueError, match="unit"):
        count_units(texts, "sentence")


# ---- planted corpora: recall and precision per edit kind -------------------------------------------------------


def fixture_bases() -> list[planted.BaseDocument]:
    """Distinct base documents from text the repository carries: web postings (tests/fixtures/dedup_web) cut into
    ~100-word documents and recent inaugural addresses (the bundled English corpus) cut into ~150-word ones."""
    web = [planted.BaseDocument(text, Path(document.source).stem)
           for document in read_documents(sorted(WEB_FIXTURES.glob("*.txt")))
           for text in planted.cut_documents(document.text, 100)]
    speeches = [planted.BaseDocument(text, "inaugural")
                for document in read_documents(sorted(BUNDLED_INAUGURAL.glob("*.txt"))[-16:])
                for text in planted.cut_documents(document.text, 150)]
    return web + speeches


@pytest.fixture(scope="module")
def planted_corpus() -> planted.PlantedCorpus:
    return planted.plant_corpus(fixture_bases(), copies_per_kind=20, negatives_per_kind=20, seed=0)


def test_planted_corpus_is_seeded_and_its_truth_is_consistent(planted_corpus):
    corpus = planted_corpus
    assert planted.plant_corpus(fixture_bases(), 20, 20, seed=0) == corpus
    assert planted.plant_corpus(fixture_bases(), 20, 20, seed=1).texts != corpus.texts
    counts = Counter(corpus.kinds)
    assert {kind: counts[kind] for kind in planted.COPY_KINDS + planted.NEGATIVE_KINDS} == {
        kind: 20 for kind in planted.COPY_KINDS + planted.NEGATIVE_KINDS}
    assert counts[planted.ORIGINAL] == 20 * len(planted.COPY_KINDS)
    assert 300 <= len(corpus.texts) <= 500
    for index, (text, kind, original) in enumerate(zip(corpus.texts, corpus.kinds, corpus.copy_of)):
        assert (original >= 0) == (kind in planted.COPY_KINDS)
        if original < 0:
            continue
        source = corpus.texts[original]
        assert corpus.kinds[original] == planted.ORIGINAL
        assert (text == source) == (kind == "exact")
        n_words, n_source = len(text.split()), len(source.split())
        rate = corpus.edit_rates[index]
        assert (0.01 <= rate <= 0.08) if kind in planted.WORD_EDIT_KINDS else rate == 0.0
        if kind == "reorder":
            assert sorted(planted.paragraphs(text)) == sorted(planted.paragraphs(source))
        elif kind == "boilerplate":
            assert source in text and n_words > n_source
        elif kind in ("delete", "insert"):
            assert abs(n_words - n_source) == max(1, round(rate * n_source))
        elif kind == "substitute":
            assert n_words == n_source
            assert sum(a != b for a, b in zip(text.split(), source.split())) == max(1, round(rate * n_source))
    assert set(np.flatnonzero(corpus.true_roots() != np.arange(len(corpus.texts)))) == {
        i for i, original in enumerate(corpus.copy_of) if original >= 0}


def test_planted_corpus_input_checks():
    bases = fixture_bases()[:10]
    with pytest.raises(GptjaxError, match="too few"):
        planted.plant_corpus(bases, copies_per_kind=5, negatives_per_kind=5)
    with pytest.raises(GptjaxError, match="unknown"):
        planted.plant_corpus(bases, 1, 0, kinds=("typo",))
    with pytest.raises(GptjaxError, match="edit_rates"):
        planted.plant_corpus(bases, 1, 0, edit_rates=(0.1, 0.05))
    with pytest.raises(GptjaxError, match="one representative per text"):
        planted.score_clusters(planted.plant_corpus(bases, 1, 0, kinds=("exact",)), np.zeros(3, np.int64))


def test_score_clusters_counts_recall_and_pairwise_precision(planted_corpus):
    corpus = planted_corpus
    perfect = planted.score_clusters(corpus, corpus.true_roots())
    assert all(score.recall == 1.0 and score.precision == 1.0 for score in perfect.values())
    assert perfect["all"].pairs == perfect["all"].documents == 20 * len(planted.COPY_KINDS)
    alone = planted.score_clusters(corpus, np.arange(len(corpus.texts)))
    assert alone["all"].caught == 0 and alone["all"].pairs == 0
    together = planted.score_clusters(corpus, np.zeros(len(corpus.texts), np.int64))
    assert together["all"].recall == 1.0 and together["all"].precision < 0.01
    assert together["same_source"].pairs > 0 and together["same_source"].precision == 0.0


def test_default_near_dedup_recall_and_precision_per_edit_kind(planted_corpus):
    scores = planted.score_clusters(planted_corpus, np.array(near_duplicate_clusters(planted_corpus.texts)))
    for kind in planted.COPY_KINDS:
        assert scores[kind].recall >= 0.9, (kind, scores[kind])
        assert scores[kind].precision >= 0.99, (kind, scores[kind])
    for kind in planted.NEGATIVE_KINDS:
        assert scores[kind].pairs == 0, (kind, scores[kind])
    assert scores["all"].precision >= 0.99 and scores["all"].recall >= 0.95, scores["all"]


def test_word_5gram_settings_at_0_8_miss_most_lightly_edited_copies(planted_corpus):
    old = MinHashConfig(ngram=5, num_perm=120, bands=20, rows=6, threshold=0.8)
    scores = planted.score_clusters(planted_corpus, np.array(near_duplicate_clusters(planted_corpus.texts, old)))
    assert all(scores[kind].recall < 0.5 for kind in planted.WORD_EDIT_KINDS), scores
    assert scores["exact"].recall == 1.0 and scores["all"].precision == 1.0


def test_verification_keeps_precision_where_banding_alone_does_not(planted_corpus):
    loose = MinHashConfig(ngram=3, num_perm=120, bands=60, rows=2, threshold=0.5)
    verified = planted.score_clusters(planted_corpus, np.array(near_duplicate_clusters(planted_corpus.texts, loose)))
    unverified = planted.score_clusters(planted_corpus, np.array(
        near_duplicate_clusters(planted_corpus.texts, dataclasses.replace(loose, verify=False))))
    assert verified["all"].precision >= 0.99 and verified["all"].recall >= 0.95
    assert unverified["all"].precision < verified["all"].precision


def test_prepare_defaults_are_the_minhash_defaults():
    assert minhash_config(PrepareConfig()) == MinHashConfig()


def test_mod_prime_equals_the_remainder():
    p = int(MINHASH_PRIME)
    edges = [0, 1, p - 1, p, p + 1, 2 * p - 1, 2 * p, 2**32 - 1, 2**32, 2**32 + 4, (p - 1) ** 2 + p - 1, 2**64 - 1]
    values = np.concatenate([np.array(edges, dtype=np.uint64),
                             np.random.default_rng(0).integers(0, 2**64 - 1, size=100_000, dtype=np.uint64)])
    assert np.array_equal(mod_prime(values.copy()), values % MINHASH_PRIME)


def test_prepare_pipeline_keeps_one_document_per_planted_group(tmp_path):
    corpus = planted.plant_corpus(fixture_bases(), copies_per_kind=8, negatives_per_kind=8, seed=5)
    inputs = tmp_path / "in" / "planted.jsonl"
    inputs.parent.mkdir()
    inputs.write_text("".join(json.dumps({"text": text}) + "\n" for text in corpus.texts), encoding="utf-8")
    data = DataConfig(dataset="", tokenizer="char", val_fraction=0.1,
                      prepare=PrepareConfig(dedup="near", chunk_bytes=20_000))
    run_pipeline([str(inputs)], tmp_path / "out", data, show_progress=False, decisions=tmp_path / "decisions.jsonl")
    records = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert [record["source"] for record in records] == [f"{inputs}:{line + 1}" for line in range(len(corpus.texts))]
    roots = planted.roots_from_pairs(len(corpus.texts), planted.decision_pairs(records))
    scores = planted.score_clusters(corpus, roots)
    assert scores["all"].recall >= 0.95 and scores["all"].precision >= 0.99, scores["all"]
    assert all(scores[kind].pairs == 0 for kind in planted.NEGATIVE_KINDS)
    assert roots.tolist() == near_duplicate_clusters(corpus.texts), "files and memory cluster alike"


def test_a_document_making_up_half_of_a_longer_one_is_its_near_duplicate():
    first, second, third = PARAGRAPHS[35], PARAGRAPHS[36], PARAGRAPHS[37]
    assert near_duplicate_clusters([first, first + "\n" + second]) == [0, 0]
    assert near_duplicate_clusters([first, first + "\n" + second + "\n" + third]) == [0, 1]
