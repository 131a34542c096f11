"""LAMBADA (OpenAI variant), as lm-eval's `lambada_openai`: context = the passage without its last word, continuation
= " " + the last word (lm-eval splits the passage on its last " "; llm-foundry's file holds exactly those two parts).
Metrics: acc = share of passages whose last word is the greedy continuation, perplexity = exp(-mean log-likelihood).
"""
from __future__ import annotations

from pathlib import Path

from gptjax.eval.tasks.base import (
    TARGET_DELIMITER,
    ContinuationItem,
    LoadedTask,
    Skipped,
    assemble,
    hub_rows,
    jsonl_built,
    task_file,
)

FILE = "lambada/lambada_openai.jsonl"
HUB = ("EleutherAI/lambada_openai", "default", "test")  # lm-eval's lambada_openai dataset, config and test_split


def build_item(index: int, row: dict) -> ContinuationItem | Skipped:
    context, continuation = row.get("context"), row.get("continuation")
    if not isinstance(context, str) or not isinstance(continuation, str) or not continuation:
        return Skipped(index, "needs a context string and a non-empty continuation string")
    return ContinuationItem(index, context, TARGET_DELIMITER + continuation)


def load(data_dir: Path, shots: int, limit: int | None) -> LoadedTask:
    path = task_file("lambada", data_dir, FILE)
    return assemble("lambada", "loglikelihood", ("acc", "perplexity"), jsonl_built("lambada", path, build_item),
                    [path], 0, limit)


def hub_row(row: dict) -> dict:
    """A lambada_openai row as context (all words but the last, as lm-eval's doc_to_text splits on " ") and
    continuation (the last word)."""
    text = row.get("text")
    if not isinstance(text, str):
        return {}
    words = text.split(" ")
    return {"context": " ".join(words[:-1]), "continuation": words[-1]}


def load_hub(shots: int, limit: int | None) -> LoadedTask:
    rows, paths = hub_rows("lambada", *HUB)
    built = [build_item(i, hub_row(row)) for i, row in enumerate(rows)]
    return assemble("lambada", "loglikelihood", ("acc", "perplexity"), built, paths, 0, limit)
