"""The per-chunk stages of `gptjax prepare`, as pure functions over documents.

A *chunk* is a run of consecutive documents (about `data.prepare.chunk_bytes` of text) in corpus order.
`clean_chunk` takes a chunk's documents through normalization, language and quality filtering and computes
everything the corpus-wide dedup needs (exact keys, LSH band hashes, line keys); `tokenize_texts` turns a chunk's
surviving documents into token ids per split. Both depend only on their inputs, so chunks can run in any process,
in any order, under any executor; gptjax.prepare.pipeline moves their results through files in a work directory.
"""
from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gptjax.config import DataConfig, PrepareConfig
from gptjax.data import store
from gptjax.data import tokenizer as tokenizers
from gptjax.prepare import dedup, langid, normalize, quality
from gptjax.prepare.documents import Document
from gptjax.prepare.report import StageStats

SPLITS = ("train", "val")


def minhash_config(prepare: PrepareConfig) -> dedup.MinHashConfig:
    """The MinHash/LSH settings of near dedup (rows = num_perm // bands; candidates always verified)."""
    return dedup.MinHashConfig(ngram=prepare.ngram, num_perm=prepare.num_perm, bands=prepare.bands,
                               rows=max(prepare.num_perm // prepare.bands, 1), threshold=prepare.jaccard)


def langid_config(prepare: PrepareConfig) -> langid.LangIdConfig:
    return langid.LangIdConfig(languages=tuple(prepare.languages), threshold=prepare.lang_threshold)


@dataclass(frozen=True)
class Drop:
    """One document a stage dropped: where it came from, which stage dropped it and why."""

    source: str
    doc_id: str
    stage: str
    reason: str


def doc_in_val(text: str, val_fraction: float) -> bool:
    """Deterministic split by document hash."""
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "little") / 2.0**64
    return bucket < val_fraction


def unit_fraction(doc_id: str) -> float:
    """A document's stable position in [0, 1), used to draw the tokenizer's training sample."""
    return int(doc_id[:15], 16) / float(1 << 60)


def _text_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class CleanChunk:
    """The documents of one chunk that passed the per-document stages, with what corpus-wide dedup needs, and
    the documents that did not."""

    texts: list[str]
    sources: list[str]
    doc_ids: list[str]
    ordinals: np.ndarray  # int64 [n]: each kept document's position in the chunk's input
    exact_keys: np.ndarray  # uint64 [n, 2]
    band_hashes: np.ndarray  # uint64 [bands, n]
    in_val: np.ndarray  # bool [n]
    unit_keys: np.ndarray  # uint64, the line/paragraph keys of every document in order
    unit_counts: np.ndarray  # int64 [n], how many of unit_keys each document has
    chars: str
    stats: dict[str, StageStats]
    dropped: list[Drop]
    dropped_ordinals: list[int]  # each dropped document's position in the chunk's input


Step = Callable[[list[Document], StageStats], tuple[list[Document], list[tuple[Document, str]]]]


def _normalize_stage(documents: list[Document], stats: StageStats) -> tuple[list[Document], list[tuple[Document, str]]]:
    kept, dropped = [], []
    for document in documents:
        stats.docs_in += 1
        stats.bytes_in += _text_bytes(document.text)
        normalized, repairs = normalize.normalize_document(document)
        stats.notes["utf8_repairs"] += repairs
        if not normalized.text.strip():
            stats.drop("empty_after_normalize", document.source)
            dropped.append((document, "empty_after_normalize"))
            continue
        stats.docs_out += 1
        stats.bytes_out += _text_bytes(normalized.text)
        kept.append(normalized)
    return kept, dropped


def _langid_stage(documents: list[Document], stats: StageStats,
                  config: langid.LangIdConfig) -> tuple[list[Document], list[tuple[Document, str]]]:
    kept, dropped = [], []
    for document in documents:
        size = _text_bytes(document.text)
        stats.docs_in += 1
        stats.bytes_in += size
        probabilities = langid.language_probabilities(document.text, config.sample_chars)
        best, probability = langid.best_target(probabilities, config)
        if probability >= config.threshold:
            stats.docs_out += 1
            stats.bytes_out += size
            kept.append(document)
            continue
        detected = max(probabilities, key=probabilities.get)
        stats.drop("wrong_language", f"{document.source} ({detected}; {best} {probability:.2f})")
        stats.notes[f"dropped_detected_{detected}"] += 1
        dropped.append((document, "wrong_language"))
    return kept, dropped


def _quality_stage(documents: list[Document], stats: StageStats) -> tuple[list[Document], list[tuple[Document, str]]]:
    kept, dropped = [], []
    for document in documents:
        size = _text_bytes(document.text)
        stats.docs_in += 1
        stats.bytes_in += size
        failed = quality.check(document.text)
        for rule in failed:
            stats.notes[f"rule_{rule}"] += 1
        if failed:
            stats.drop(failed[0], document.source)
            dropped.append((document, failed[0]))
            continue
        stats.docs_out += 1
        stats.bytes_out += size
        kept.append(document)
    return kept, dropped


def _cleaning_steps(prepare: PrepareConfig) -> list[tuple[str, Step]]:
    steps: list[tuple[str, Step]] = []
    if prepare.normalize:
        steps.append(("normalize", _normalize_stage))
    if prepare.languages:
        steps.append(("langid", functools.partial(_langid_stage, config=langid_config(prepare))))
    if prepare.quality:
        steps.append(("quality", _quality_stage))
    return steps


def _band_hash_columns(texts: list[str], minhash: dedup.MinHashConfig) -> np.ndarray:
    """uint64 [bands, n]: the LSH band hashes of each text's MinHash signature."""
    if not texts:
        return np.zeros((minhash.bands, 0), dtype=np.uint64)
    signatures = np.stack([dedup.text_signature(text, minhash)[1] for text in texts])
    return np.ascontiguousarray(dedup.band_hashes(signatures, minhash.bands, minhash.rows).T)


def clean_chunk(documents: list[Document], data: DataConfig) -> CleanChunk:
    """Normalize, filter and key one chunk's documents (pure: the same documents give the same result)."""
    prepare = data.prepare
    ordinal_of = {document.doc_id: position for position, document in enumerate(documents)}
    stats: dict[str, StageStats] = {}
    dropped: list[Drop] = []
    for name, step in _cleaning_steps(prepare):
        started = time.perf_counter()
        stats[name] = StageStats()
        documents, step_dropped = step(documents, stats[name])
        dropped += [Drop(document.source, document.doc_id, name, reason) for document, reason in step_dropped]
        stats[name].seconds = time.perf_counter() - started

    started = time.perf_counter()
    n = len(documents)
    texts = [document.text for document in documents]
    exact = dedup.exact_keys(texts) if prepare.dedup != "none" else np.zeros((n, 2), dtype=np.uint64)
    bands = np.zeros((0, n), dtype=np.uint64)
    if prepare.dedup == "near":
        bands = _band_hash_columns(texts, minhash_config(prepare))
    if prepare.dedup != "none":
        stats["dedup_near" if prepare.dedup == "near" else "dedup_exact"] = StageStats(
            seconds=time.perf_counter() - started)
    started = time.perf_counter()
    boilerplate = prepare.boilerplate != "none"
    unit_lists = [dedup.unit_keys(text, prepare.boilerplate) for text in texts] if boilerplate else [[]] * n
    if boilerplate:
        stats["boilerplate"] = StageStats(seconds=time.perf_counter() - started)
    return CleanChunk(
        texts=texts, sources=[d.source for d in documents], doc_ids=[d.doc_id for d in documents],
        ordinals=np.array([ordinal_of[d.doc_id] for d in documents], dtype=np.int64),
        exact_keys=exact, band_hashes=bands,
        in_val=np.array([doc_in_val(text, data.val_fraction) for text in texts], dtype=bool),
        unit_keys=np.array([key for keys in unit_lists for key in keys], dtype=np.uint64),
        unit_counts=np.array([len(keys) for keys in unit_lists], dtype=np.int64),
        chars="".join(sorted(set().union(*map(set, texts)))) if data.tokenizer == "char" else "",
        stats=stats, dropped=dropped, dropped_ordinals=[ordinal_of[drop.doc_id] for drop in dropped])


@dataclass(frozen=True)
class TokenizedChunk:
    """Token ids of one chunk's documents per split: concatenated (no separators) plus per-document lengths."""

    tokens: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    n_bytes: dict[str, int]
    stats: dict[str, StageStats]
    dropped_positions: list[int]  # the texts that encoded to nothing (dropped as "no_tokens")


def tokenize_texts(tok: tokenizers.Tokenizer, texts: list[str], in_val: list[bool], sources: list[str],
                   stats: StageStats) -> TokenizedChunk:
    """Token ids of `texts` routed to train or val; documents that encode to nothing are dropped and counted."""
    dtype = store.token_dtype(tok.vocab_size)
    started = time.perf_counter()
    encoded = tokenizers.encode_many(tok, texts, num_threads=1)
    pieces: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    n_bytes = dict.fromkeys(SPLITS, 0)
    dropped_positions = []
    for position, (ids, text, val, source) in enumerate(zip(encoded, texts, in_val, sources)):
        size = _text_bytes(text)
        stats.docs_in += 1
        stats.bytes_in += size
        if not ids:
            stats.drop("no_tokens", source)
            dropped_positions.append(position)
            continue
        split = "val" if val else "train"
        pieces[split].append(np.asarray(ids, dtype=dtype))
        n_bytes[split] += size
        stats.docs_out += 1
        stats.bytes_out += size
        stats.tokens_out += len(ids)
    stats.seconds += time.perf_counter() - started
    return TokenizedChunk(
        tokens={s: np.concatenate(p) if p else np.zeros(0, dtype) for s, p in pieces.items()},
        lengths={s: np.array([len(a) for a in p], dtype=np.int64) for s, p in pieces.items()},
        n_bytes=n_bytes, stats={"tokenize": stats}, dropped_positions=dropped_positions)


def strip_boilerplate(texts: list[str], sources: list[str], frequent: frozenset[int], unit: str,
                      stats: StageStats) -> tuple[list[str], list[int]]:
    """Texts without their boilerplate units and the positions of those still holding text (the others are
    dropped as "empty_after_boilerplate")."""
    started = time.perf_counter()
    kept_texts, kept_positions = [], []
    for position, (text, source) in enumerate(zip(texts, sources)):
        stats.docs_in += 1
        stats.bytes_in += _text_bytes(text)
        stripped, removed = dedup.drop_units(text, frequent, unit)
        stats.notes[f"{unit}s_removed"] += removed
        if not stripped.strip():
            stats.drop("empty_after_boilerplate", source)
            continue
        stats.docs_out += 1
        stats.bytes_out += _text_bytes(stripped)
        kept_texts.append(stripped)
        kept_positions.append(position)
    stats.seconds += time.perf_counter() - started
    return kept_texts, kept_positions
