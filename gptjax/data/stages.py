"""The per-chunk stages of `gptjax prepare`, as pure functions over documents, plus their chunk files.

A *chunk* is a run of consecutive documents (about `chunk_bytes` of text) in corpus order. `clean_chunk` takes a
chunk's documents through normalization, language and quality filtering and computes everything the corpus-wide
dedup needs (exact keys, LSH band hashes, line keys); `tokenize_texts` turns a chunk's surviving documents into
token ids per split. Both depend only on their inputs, so chunks can run in any process, in any order; the
orchestration (gptjax.data.pipeline) writes and reads their results as files in a work directory.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptjax.fileio import atomic_open, write_bytes_atomic
from gptjax.data import dedup, langid, normalize, quality, store
from gptjax.data import tokenizer as tokenizers
from gptjax.data.documents import Document
from gptjax.data.report import StageStats
from gptjax.errors import GptjaxError

SPLITS = ("train", "val")
DEDUP_MODES = ("none", "exact", "near")
BOILERPLATE_MODES = ("none", "line", "paragraph")


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of `gptjax prepare`. `settings_key` covers the ones that change the output.

    Stages: read (`text_field`, `txt_mode`, `max_doc_bytes`) -> normalize -> language filter (off when `languages`
    is empty) -> Gopher quality rules -> dedup (`exact`, or `near` = exact then MinHash/LSH at `jaccard`) ->
    boilerplate line/paragraph removal (lines seen more than `boilerplate_max_count` times) -> split -> tokenizer
    (trained on a sample of at most `sample_docs` train documents / `sample_bytes`) -> tokenize -> shards of at
    most `shard_tokens` tokens.
    """

    tokenizer: str = "char"
    vocab_size: int = 4096
    model_type: str = "bpe"
    byte_fallback: bool = True
    tokenizer_dir: str | None = None  # gpt2_bpe vocab/merges, or a saved tokenizer to reuse instead of training
    sample_docs: int = 100_000
    sample_bytes: int = 100 << 20
    val_fraction: float = 0.1
    text_field: str = "text"
    txt_mode: str = "file"
    max_doc_bytes: int = 32 << 20
    normalize: bool = True
    languages: tuple[str, ...] = ()
    lang_threshold: float = 0.5
    quality: bool = True
    dedup: str = "near"
    jaccard: float = 0.8
    num_perm: int = 120
    bands: int = 20
    ngram: int = 5
    boilerplate: str = "none"
    boilerplate_max_count: int = 1
    chunk_bytes: int = 16 << 20
    shard_tokens: int = 1 << 26
    workers: int = 1
    tfds: bool = False

    def __post_init__(self) -> None:
        if self.tokenizer not in ("char", "sentencepiece", "gpt2_bpe"):
            raise GptjaxError(f"unknown tokenizer '{self.tokenizer}' (use char, sentencepiece or gpt2_bpe)")
        if self.tokenizer == "gpt2_bpe" and not self.tokenizer_dir:
            raise GptjaxError("--tokenizer gpt2_bpe needs --tokenizer-dir holding vocab.json and merges.txt")
        if self.model_type not in ("bpe", "unigram"):
            raise GptjaxError(f"--model-type {self.model_type}: use bpe or unigram")
        if self.dedup not in DEDUP_MODES:
            raise GptjaxError(f"--dedup {self.dedup}: use one of {', '.join(DEDUP_MODES)}")
        if self.boilerplate not in BOILERPLATE_MODES:
            raise GptjaxError(f"--boilerplate {self.boilerplate}: use one of {', '.join(BOILERPLATE_MODES)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise GptjaxError(f"--val-fraction {self.val_fraction} must lie in [0, 1)")
        for name in ("chunk_bytes", "shard_tokens", "max_doc_bytes", "sample_docs", "sample_bytes", "num_perm",
                     "bands", "ngram"):
            if getattr(self, name) < 1:
                raise GptjaxError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dedup == "near":
            try:
                self.minhash()
            except ValueError as error:
                raise GptjaxError(f"near-dedup settings: {error}") from None
        if self.languages:
            try:
                self.langid()
            except ValueError as error:
                raise GptjaxError(f"language filter: {error}") from None

    def minhash(self) -> dedup.MinHashConfig:
        return dedup.MinHashConfig(ngram=self.ngram, num_perm=self.num_perm, bands=self.bands,
                                   rows=max(self.num_perm // self.bands, 1), threshold=self.jaccard)

    def langid(self) -> langid.LangIdConfig:
        return langid.LangIdConfig(languages=tuple(self.languages), threshold=self.lang_threshold)

    def settings_key(self) -> dict:
        """The settings that determine the output (not how many workers compute it or extra exports)."""
        key = dataclasses.asdict(self)
        for name in ("workers", "tfds"):
            key.pop(name)
        key["languages"] = list(self.languages)
        return key


def doc_in_val(text: str, val_fraction: float) -> bool:
    """Deterministic split by document hash."""
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "little") / 2.0**64
    return bucket < val_fraction


def unit_fraction(doc_id: str) -> float:
    """A document's stable position in [0, 1), used to draw the tokenizer's training sample."""
    return int(doc_id[:15], 16) / float(1 << 60)


def band_hashes(signature: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit LSH key per band of a MinHash signature (uint64 [bands])."""
    values = signature[: bands * rows].astype(np.uint64).reshape(bands, rows)
    combined = np.zeros(bands, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for row in range(rows):
            combined = combined * np.uint64(0x100000001B3) + values[:, row] + np.uint64(row + 1)
        return _mix64(combined)


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer over uint64 values."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(30))
        values = values * np.uint64(0xBF58476D1CE4E5B9)
        values = values ^ (values >> np.uint64(27))
        values = values * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def _text_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass
class CleanChunk:
    """The documents of one chunk that passed the per-document stages, with what corpus-wide dedup needs."""

    texts: list[str]
    sources: list[str]
    doc_ids: list[str]
    exact_keys: np.ndarray  # uint64 [n, 2]
    band_hashes: np.ndarray  # uint64 [bands, n]
    in_val: np.ndarray  # bool [n]
    unit_keys: np.ndarray  # uint64, the line/paragraph keys of every document in order
    unit_counts: np.ndarray  # int64 [n], how many of unit_keys each document has
    chars: str
    stats: dict[str, StageStats]


def _normalize_stage(documents: list[Document], stats: StageStats) -> list[Document]:
    kept = []
    for document in documents:
        stats.docs_in += 1
        stats.bytes_in += _text_bytes(document.text)
        normalized, repairs = normalize.normalize_document(document)
        stats.notes["utf8_repairs"] += repairs
        if not normalized.text.strip():
            stats.drop("empty_after_normalize", document.source)
            continue
        stats.docs_out += 1
        stats.bytes_out += _text_bytes(normalized.text)
        kept.append(normalized)
    return kept


def _langid_stage(documents: list[Document], stats: StageStats, config: langid.LangIdConfig) -> list[Document]:
    targets = [langid.canonical_language(code) for code in config.languages]
    kept = []
    for document in documents:
        size = _text_bytes(document.text)
        stats.docs_in += 1
        stats.bytes_in += size
        probabilities = langid.language_probabilities(document.text, config.sample_chars)
        best = max(targets, key=lambda code: probabilities.get(code, 0.0))
        if probabilities.get(best, 0.0) >= config.threshold:
            stats.docs_out += 1
            stats.bytes_out += size
            kept.append(document)
            continue
        detected = max(probabilities, key=probabilities.get)
        stats.drop("wrong_language", f"{document.source} ({detected}; {best} {probabilities.get(best, 0.0):.2f})")
        stats.notes[f"dropped_detected_{detected}"] += 1
    return kept


def _quality_stage(documents: list[Document], stats: StageStats) -> list[Document]:
    kept = []
    for document in documents:
        size = _text_bytes(document.text)
        stats.docs_in += 1
        stats.bytes_in += size
        failed = quality.check(document.text)
        for rule in failed:
            stats.notes[f"rule_{rule}"] += 1
        if failed:
            stats.drop(failed[0], document.source)
            continue
        stats.docs_out += 1
        stats.bytes_out += size
        kept.append(document)
    return kept


def clean_chunk(documents: list[Document], config: PipelineConfig) -> CleanChunk:
    """Normalize, filter and key one chunk's documents (pure: the same documents give the same result)."""
    stats: dict[str, StageStats] = {}
    steps: list[tuple[str, Callable[[list[Document], StageStats], list[Document]]]] = []
    if config.normalize:
        steps.append(("normalize", _normalize_stage))
    if config.languages:
        steps.append(("langid", functools.partial(_langid_stage, config=config.langid())))
    if config.quality:
        steps.append(("quality", _quality_stage))
    for name, step in steps:
        started = time.perf_counter()
        stats[name] = StageStats()
        documents = step(documents, stats[name])
        stats[name].seconds = time.perf_counter() - started

    started = time.perf_counter()
    n = len(documents)
    texts = [document.text for document in documents]
    exact = np.zeros((n, 2), dtype=np.uint64)
    if config.dedup != "none" and n:
        exact = np.frombuffer(b"".join(dedup.exact_key(text) for text in texts), dtype=np.uint64).reshape(n, 2)
    minhash = config.minhash() if config.dedup == "near" else None
    bands = np.zeros((minhash.bands if minhash else 0, n), dtype=np.uint64)
    if minhash is not None:
        for column, text in enumerate(texts):
            _, signature = dedup.text_signature(text, minhash)
            bands[:, column] = band_hashes(signature, minhash.bands, minhash.rows)
    if config.dedup != "none":
        stats["dedup_near" if config.dedup == "near" else "dedup_exact"] = StageStats(
            seconds=time.perf_counter() - started)
    started = time.perf_counter()
    unit_lists = [dedup.unit_keys(text, config.boilerplate) for text in texts] if config.boilerplate != "none" else []
    unit_counts = np.array([len(keys) for keys in unit_lists] if unit_lists else [0] * n, dtype=np.int64)
    unit_keys = np.array([key for keys in unit_lists for key in keys], dtype=np.uint64)
    if config.boilerplate != "none":
        stats["boilerplate"] = StageStats(seconds=time.perf_counter() - started)
    chars = "".join(sorted(set().union(*map(set, texts)))) if config.tokenizer == "char" else ""
    return CleanChunk(
        texts=texts, sources=[d.source for d in documents], doc_ids=[d.doc_id for d in documents],
        exact_keys=exact, band_hashes=bands,
        in_val=np.array([doc_in_val(text, config.val_fraction) for text in texts], dtype=bool),
        unit_keys=unit_keys, unit_counts=unit_counts, chars=chars, stats=stats)


def remove_boilerplate_units(text: str, frequent_keys: frozenset, unit: str) -> tuple[str, int]:
    """`text` without its lines (or paragraphs) whose keys are in `frequent_keys`, and how many were removed."""
    return dedup.drop_frequent_units(text, _Membership(frequent_keys), 0, unit)


class _Membership:
    """Counts-like view of a key set for `dedup.drop_frequent_units`: 1 for members, 0 otherwise."""

    def __init__(self, keys: frozenset):
        self.keys = keys

    def __getitem__(self, key: int) -> int:
        return int(key in self.keys)


@dataclass
class TokenizedChunk:
    """Token ids of one chunk's documents per split: concatenated (no separators) plus per-document lengths."""

    tokens: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    n_bytes: dict[str, int]
    stats: dict[str, StageStats]


def tokenize_texts(tok: tokenizers.Tokenizer, texts: list[str], in_val: list[bool], sources: list[str],
                   stats: StageStats) -> TokenizedChunk:
    """Token ids of `texts` routed to train or val; documents that encode to nothing are dropped and counted."""
    dtype = store.token_dtype(tok.vocab_size)
    started = time.perf_counter()
    encoded = tokenizers.encode_many(tok, texts, num_threads=1)
    pieces: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    n_bytes = dict.fromkeys(SPLITS, 0)
    for ids, text, val, source in zip(encoded, texts, in_val, sources):
        size = _text_bytes(text)
        stats.docs_in += 1
        stats.bytes_in += size
        if not ids:
            stats.drop("no_tokens", source)
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
        n_bytes=n_bytes, stats={"tokenize": stats})


# ---- chunk files in the work directory -------------------------------------------------------------------------


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Saves `array` as .npy under `path`, which appears only when complete."""
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def clean_paths(clean_dir: Path, chunk: int) -> dict[str, Path]:
    stem = f"{chunk:06d}"
    return {name: clean_dir / f"{stem}.{name}" for name in
            ("text.bin", "offsets.npy", "exact.npy", "bands.npy", "val.npy", "units.npy", "unit_counts.npy",
             "sources.json", "done.json")}


def write_clean_chunk(clean_dir: Path, chunk: int, result: CleanChunk) -> None:
    """Writes a cleaned chunk's files, each atomically, the `done.json` marker last."""
    paths = clean_paths(clean_dir, chunk)
    encoded = [text.encode("utf-8", "surrogatepass") for text in result.texts]
    write_bytes_atomic(paths["text.bin"], b"".join(encoded))
    save_npy_atomic(paths["offsets.npy"], np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64))
    save_npy_atomic(paths["exact.npy"], result.exact_keys)
    save_npy_atomic(paths["bands.npy"], result.band_hashes)
    save_npy_atomic(paths["val.npy"], result.in_val)
    save_npy_atomic(paths["units.npy"], result.unit_keys)
    save_npy_atomic(paths["unit_counts.npy"], result.unit_counts)
    write_bytes_atomic(paths["sources.json"], json.dumps({"sources": result.sources, "doc_ids": result.doc_ids}).encode())
    store.write_json_atomic(paths["done.json"], {
        "n_docs": len(result.texts), "chars": result.chars,
        "stats": {name: stats.to_json() for name, stats in result.stats.items()}})


class CleanChunkReader:
    """Random access to the texts of a cleaned chunk (memory-mapped)."""

    def __init__(self, clean_dir: Path, chunk: int):
        paths = clean_paths(clean_dir, chunk)
        self.offsets = np.load(paths["offsets.npy"])
        size = paths["text.bin"].stat().st_size
        self._data = np.memmap(paths["text.bin"], dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def text(self, index: int) -> str:
        return bytes(self._data[self.offsets[index]:self.offsets[index + 1]]).decode("utf-8", "surrogatepass")

    def texts(self) -> list[str]:
        return [self.text(i) for i in range(len(self))]


def part_paths(parts_dir: Path, chunk: int) -> dict[str, Path]:
    stem = f"{chunk:06d}"
    paths = {f"{split}.bin": parts_dir / f"{stem}.{split}.bin" for split in SPLITS}
    paths.update({f"{split}.len.npy": parts_dir / f"{stem}.{split}.len.npy" for split in SPLITS})
    paths["done.json"] = parts_dir / f"{stem}.done.json"
    return paths


def write_token_part(parts_dir: Path, chunk: int, result: TokenizedChunk, fingerprint: str) -> dict:
    """Writes a tokenized chunk (per split: token file + lengths), each atomically, `done.json` last."""
    paths = part_paths(parts_dir, chunk)
    for split in SPLITS:
        store.write_tokens(paths[f"{split}.bin"], result.tokens[split], fingerprint)
        save_npy_atomic(paths[f"{split}.len.npy"], result.lengths[split])
    done = {"n_tokens": {s: int(result.tokens[s].size) for s in SPLITS},
            "n_docs": {s: int(result.lengths[s].size) for s in SPLITS}, "n_bytes": result.n_bytes,
            "stats": {name: stats.to_json() for name, stats in result.stats.items()}}
    store.write_json_atomic(paths["done.json"], done)
    return done


def read_done(path: Path) -> dict | None:
    """A chunk's done marker, or None when the chunk is not finished."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
