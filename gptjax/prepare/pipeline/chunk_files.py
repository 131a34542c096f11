"""The work directory's files: cleaned chunks, token parts, the corpus-wide dedup arrays, done markers.

Every file is written atomically and each chunk's `done.json` marker last, so a chunk whose marker reads back is
complete; a killed run resumes from those. Layout under `.<out>.work/`: `settings.json`, `clean/NNNNNN.*`,
`dedup.json` + `keep.npy` + `duplicate_of.npy` + `duplicate_stage.npy` (+ `boilerplate.npy`), `tokenizer/` +
`tokenizer.json`, `parts/NNNNNN.*`, `final/` (the output being assembled).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptjax.data import store
from gptjax.fileio import atomic_open, write_bytes_atomic, write_json_atomic
from gptjax.prepare.stages import SPLITS, CleanChunk, Drop, TokenizedChunk

KEEP = "keep.npy"  # bool [n]: documents that survive dedup
DUPLICATE_OF = "duplicate_of.npy"  # int64 [n]: the kept copy of each duplicate, -1 for the others
DUPLICATE_STAGE = "duplicate_stage.npy"  # int8 [n]: index into DUPLICATE_STAGES
DUPLICATE_STAGES = ("", "dedup_exact", "dedup_near")
DUPLICATE_REASONS = {"dedup_exact": "exact_duplicate", "dedup_near": "near_duplicate"}
BOILERPLATE = "boilerplate.npy"  # uint64: sorted keys of the frequent lines/paragraphs


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Saves `array` as .npy under `path`, which appears only when complete."""
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def read_done(path: Path) -> dict | None:
    """A done marker (or other small JSON file of the work directory), or None when it is not written yet."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _drops_json(drops: list[Drop], positions: list[int]) -> dict:
    return {"positions": positions, "sources": [d.source for d in drops], "doc_ids": [d.doc_id for d in drops],
            "stages": [d.stage for d in drops], "reasons": [d.reason for d in drops]}


def read_drops(path: Path) -> tuple[list[int], list[Drop]]:
    """(positions, drops) saved by `write_clean_chunk` or `write_token_part`."""
    data = json.loads(path.read_text())
    drops = [Drop(*fields) for fields in zip(data["sources"], data["doc_ids"], data["stages"], data["reasons"])]
    return data["positions"], drops


# ---- cleaned chunks --------------------------------------------------------------------------------------------


def clean_paths(clean_dir: Path, chunk: int) -> dict[str, Path]:
    stem = f"{chunk:06d}"
    return {name: clean_dir / f"{stem}.{name}" for name in
            ("text.bin", "offsets.npy", "exact.npy", "bands.npy", "val.npy", "units.npy", "unit_counts.npy",
             "sources.json", "drops.json", "done.json")}


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
    write_json_atomic(paths["sources.json"], {"sources": result.sources, "doc_ids": result.doc_ids,
                                              "ordinals": result.ordinals.tolist()})
    write_json_atomic(paths["drops.json"], _drops_json(result.dropped, result.dropped_ordinals))
    write_json_atomic(paths["done.json"], {
        "n_docs": len(result.texts), "chars": result.chars,
        "stats": {name: stats.to_json() for name, stats in result.stats.items()}})


@dataclass(frozen=True)
class ChunkSources:
    """Where each kept document of a cleaned chunk came from, and its position in the chunk's input."""

    sources: list[str]
    doc_ids: list[str]
    ordinals: list[int]


def read_chunk_sources(clean_dir: Path, chunk: int) -> ChunkSources:
    data = json.loads(clean_paths(clean_dir, chunk)["sources.json"].read_text())
    return ChunkSources(data["sources"], data["doc_ids"], data["ordinals"])


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


@dataclass(frozen=True)
class CorpusIndex:
    """Per-document arrays over all cleaned chunks, in corpus order."""

    chunk_starts: np.ndarray  # int64 [n_chunks + 1]: first global document of each chunk
    exact_keys: np.ndarray  # uint64 [n, 2]
    in_val: np.ndarray  # bool [n]
    n_bytes: np.ndarray  # int64 [n]

    @property
    def n_docs(self) -> int:
        return int(self.chunk_starts[-1])

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_starts) - 1

    def locate(self, doc: int) -> tuple[int, int]:
        """(chunk, position in that chunk) of global document `doc`."""
        chunk = int(np.searchsorted(self.chunk_starts, doc, side="right")) - 1
        return chunk, doc - int(self.chunk_starts[chunk])


def load_corpus_index(clean_dir: Path, n_chunks: int) -> CorpusIndex:
    counts, keys, in_val, sizes = [], [], [], []
    for chunk in range(n_chunks):
        paths = clean_paths(clean_dir, chunk)
        offsets = np.load(paths["offsets.npy"])
        counts.append(len(offsets) - 1)
        sizes.append(np.diff(offsets))
        keys.append(np.load(paths["exact.npy"]))
        in_val.append(np.load(paths["val.npy"]))
    return CorpusIndex(
        chunk_starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        exact_keys=np.concatenate(keys) if keys else np.zeros((0, 2), np.uint64),
        in_val=np.concatenate(in_val) if in_val else np.zeros(0, bool),
        n_bytes=np.concatenate(sizes).astype(np.int64) if sizes else np.zeros(0, np.int64))


class SourceNames:
    """(source, doc_id) of documents by global index, loaded per chunk on demand (a few chunks kept)."""

    def __init__(self, clean_dir: Path, index: CorpusIndex):
        self.clean_dir = clean_dir
        self.index = index
        self._chunk = functools.lru_cache(maxsize=8)(functools.partial(read_chunk_sources, clean_dir))

    def source(self, doc: int) -> str:
        chunk, local = self.index.locate(doc)
        return self._chunk(chunk).sources[local]

    def doc_id(self, doc: int) -> str:
        chunk, local = self.index.locate(doc)
        return self._chunk(chunk).doc_ids[local]


def frequent_units(work: Path) -> frozenset[int]:
    """The boilerplate keys saved in `work`, loaded once per process and file version."""
    path = work / BOILERPLATE
    stat = path.stat()
    return _load_frequent_units(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_frequent_units(path: str, size: int, mtime_ns: int) -> frozenset[int]:
    return frozenset(int(key) for key in np.load(path))


# ---- token parts -----------------------------------------------------------------------------------------------


def part_paths(parts_dir: Path, chunk: int) -> dict[str, Path]:
    stem = f"{chunk:06d}"
    paths = {f"{split}.bin": parts_dir / f"{stem}.{split}.bin" for split in SPLITS}
    paths.update({f"{split}.len.npy": parts_dir / f"{stem}.{split}.len.npy" for split in SPLITS})
    paths["drops.json"] = parts_dir / f"{stem}.drops.json"
    paths["done.json"] = parts_dir / f"{stem}.done.json"
    return paths


def write_token_part(parts_dir: Path, chunk: int, result: TokenizedChunk, fingerprint: str, drops: list[Drop],
                     dropped_docs: list[int]) -> dict:
    """Writes a tokenized chunk (per split: token file + lengths) and the documents it dropped (by global
    index), each atomically, `done.json` last; returns the done marker."""
    paths = part_paths(parts_dir, chunk)
    for split in SPLITS:
        store.write_tokens(paths[f"{split}.bin"], result.tokens[split], fingerprint)
        save_npy_atomic(paths[f"{split}.len.npy"], result.lengths[split])
    write_json_atomic(paths["drops.json"], _drops_json(drops, dropped_docs))
    done = {"n_tokens": {s: int(result.tokens[s].size) for s in SPLITS},
            "n_docs": {s: int(result.lengths[s].size) for s in SPLITS}, "n_bytes": result.n_bytes,
            "stats": {name: stats.to_json() for name, stats in result.stats.items()}}
    write_json_atomic(paths["done.json"], done)
    return done
