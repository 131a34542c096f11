"""The texts of the documents that survive dedup, in corpus order, boilerplate removed: what the tokenizer trains
on and what a character-cut split tokenizes."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from gptjax.config import DataConfig
from gptjax.prepare import stages
from gptjax.prepare.pipeline import chunk_files
from gptjax.prepare.report import StageStats


def surviving_texts(work: Path, starts: np.ndarray, keep: np.ndarray, data: DataConfig, stats: StageStats,
                    only: Callable[[str, bool], bool] | None = None, byte_budget: int | None = None,
                    emptied: list[int] | None = None) -> list[str]:
    """Texts of the surviving documents in corpus order, optionally selected by `only(doc_id, in_val)` and capped
    at about `byte_budget`; the global index of each document boilerplate removal empties goes to `emptied`."""
    unit = data.prepare.boilerplate
    frequent = chunk_files.frequent_units(work) if unit != "none" else frozenset()
    texts: list[str] = []
    total = 0
    for chunk in range(len(starts) - 1):
        reader = chunk_files.CleanChunkReader(work / "clean", chunk)
        names = chunk_files.read_chunk_sources(work / "clean", chunk)
        in_val = np.load(chunk_files.clean_paths(work / "clean", chunk)["val.npy"])
        for local in np.flatnonzero(keep[starts[chunk]:starts[chunk + 1]]):
            if only is not None and not only(names.doc_ids[local], bool(in_val[local])):
                continue
            text = reader.text(int(local))
            if unit != "none":
                kept, _ = stages.strip_boilerplate([text], [names.sources[local]], frequent, unit, stats)
                if not kept:
                    if emptied is not None:
                        emptied.append(int(starts[chunk] + local))
                    continue
                text = kept[0]
            texts.append(text)
            total += len(text.encode("utf-8", "surrogatepass"))
            if byte_budget is not None and total >= byte_budget:
                return texts
    return texts


def char_cut_texts(work: Path, starts: np.ndarray, keep: np.ndarray, data: DataConfig, stats: StageStats,
                   emptied: list[int] | None = None) -> tuple[str, str]:
    """nanoGPT's split for corpora too small for a hash split: all documents joined, cut 90/10 by characters."""
    joined = "\n\n".join(surviving_texts(work, starts, keep, data, stats, emptied=emptied))
    cut = int(len(joined) * (1.0 - data.val_fraction))
    return joined[:cut], joined[cut:]
