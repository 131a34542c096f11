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
    jsonl_built,
    task_file,
)

FILE = "lambada/lambada_openai.jsonl"


def build_item(index: int, row: dict) -> ContinuationItem | Skipped:
    context, continuation = row.get("context"), row.get("continuation")
    if not isinstance(context, str) or not isinstance(continuation, str) or not continuation:
        return Skipped(index, "needs a context string and a non-empty continuation string")
    return ContinuationItem(index, context, TARGET_DELIMITER + continuation)


def load(data_dir: Path, shots: int, limit: int | None) -> LoadedTask:
    path = task_file("lambada", data_dir, FILE)
    return assemble("lambada", "loglikelihood", ("acc", "perplexity"), jsonl_built("lambada", path, build_item),
                    [path], 0, limit)
