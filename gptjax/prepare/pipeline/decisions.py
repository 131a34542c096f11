"""`gptjax prepare --decisions FILE`: what happened to every document the readers produced, one JSON line each.

A line holds the document's `source` and `doc_id` and `"kept": true`, or `"kept": false` with the `stage` and
`reason` that dropped it; a duplicate also names the copy that was kept (`duplicate_of`: source and doc_id).
Lines follow the input order. Records the readers rejected (invalid JSON, too long, binary files) are not
documents yet: the report's read stage counts them.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gptjax.fileio import atomic_open
from gptjax.prepare.pipeline import chunk_files
from gptjax.prepare.stages import Drop


def _part_drops(work: Path, n_parts: int) -> dict[int, Drop]:
    """The documents boilerplate removal or tokenization dropped, by global index."""
    drops: dict[int, Drop] = {}
    for part in range(n_parts):
        docs, part_drops = chunk_files.read_drops(chunk_files.part_paths(work / "parts", part)["drops.json"])
        drops.update(zip(docs, part_drops))
    return drops


def _dropped(drop: Drop) -> dict:
    return {"source": drop.source, "doc_id": drop.doc_id, "kept": False, "stage": drop.stage, "reason": drop.reason}


def decision_lines(work: Path, n_chunks: int, n_parts: int) -> Iterator[tuple[int, dict]]:
    """Every document's decision, as (ordinal in its chunk, record) per chunk, chunk by chunk."""
    index = chunk_files.load_corpus_index(work / "clean", n_chunks)
    names = chunk_files.SourceNames(work / "clean", index)
    duplicate_of = np.load(work / chunk_files.DUPLICATE_OF)
    duplicate_stage = np.load(work / chunk_files.DUPLICATE_STAGE)
    later_drops = _part_drops(work, n_parts)
    for chunk in range(n_chunks):
        records: list[tuple[int, dict]] = []
        ordinals, clean_drops = chunk_files.read_drops(chunk_files.clean_paths(work / "clean", chunk)["drops.json"])
        records += [(ordinal, _dropped(drop)) for ordinal, drop in zip(ordinals, clean_drops)]
        survivors = chunk_files.read_chunk_sources(work / "clean", chunk)
        for local, ordinal in enumerate(survivors.ordinals):
            doc = int(index.chunk_starts[chunk]) + local
            source, doc_id = survivors.sources[local], survivors.doc_ids[local]
            if duplicate_stage[doc]:
                stage = chunk_files.DUPLICATE_STAGES[duplicate_stage[doc]]
                record = _dropped(Drop(source, doc_id, stage, chunk_files.DUPLICATE_REASONS[stage]))
                kept_copy = int(duplicate_of[doc])
                record["duplicate_of"] = {"source": names.source(kept_copy), "doc_id": names.doc_id(kept_copy)}
            elif doc in later_drops:
                record = _dropped(later_drops[doc])
            else:
                record = {"source": source, "doc_id": doc_id, "kept": True}
            records.append((ordinal, record))
        yield from sorted(records, key=lambda item: item[0])


def write_decisions(path: Path, work: Path, n_chunks: int, n_parts: int) -> Counter:
    """Writes the decisions file atomically; returns how many documents were kept (`"kept"`) and dropped per
    `"stage/reason"`."""
    counts: Counter = Counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as f:
        for _, record in decision_lines(work, n_chunks, n_parts):
            counts["kept" if record["kept"] else f"{record['stage']}/{record['reason']}"] += 1
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return counts
