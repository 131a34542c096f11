"""HellaSwag (validation), as lm-eval's `hellaswag` task: context = query, choices = the 4 endings.

lm-eval (tasks/hellaswag/utils.py) builds query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())
and choices = preprocess(ending). The shared file (klosax's text version, see its SOURCE.md) holds
`activity_label + ": " + ctx` already passed through a near-identical preprocess, without the ctx_a / ctx_b split,
so two steps are reconstructed:
- ctx_b.capitalize(): ActivityNet items end in the lower-case start of the next sentence (ctx_b, "... a roof. he");
  that trailing fragment after the last ". " is given an upper-case first letter. WikiHow items (ctx_b empty, their
  contexts end in a full sentence) are left as they are.
- preprocess() is applied again (idempotent on cleaned text) so any leftover [..] markup is removed as lm-eval does.
"""
from __future__ import annotations

import re
from pathlib import Path

from gptjax.eval.tasks.base import (
    TARGET_DELIMITER,
    ChoiceItem,
    LoadedTask,
    Skipped,
    assemble,
    checked_gold,
    hub_rows,
    jsonl_built,
    string_list_problem,
    task_file,
)

FILE = "hellaswag/hellaswag_val.jsonl"
HUB = ("Rowan/hellaswag", "default", "validation")  # lm-eval's dataset_path, dataset_name, validation_split
N_CHOICES = 4


def preprocess(text: str) -> str:
    """lm-eval's hellaswag preprocess: strip, " [title]" -> ". ", drop [..] markup, collapse double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def capitalized_last_fragment(context: str) -> str:
    """`context` with the lower-case sentence fragment after its last ". " (ActivityNet's ctx_b) capitalised."""
    head, sep, tail = context.rpartition(". ")
    if sep and tail[:1].islower():
        return head + sep + tail[0].upper() + tail[1:]
    return context


def build_item(index: int, row: dict) -> ChoiceItem | Skipped:
    if not isinstance(row.get("context"), str):
        return Skipped(index, "context missing or not a string")
    why = string_list_problem("endings", row.get("endings"), N_CHOICES) or checked_gold(row.get("label"), N_CHOICES)
    if why:
        return Skipped(index, why)
    query = preprocess(capitalized_last_fragment(row["context"]))
    choices = tuple(preprocess(e) for e in row["endings"])
    return ChoiceItem(index, (query,) * N_CHOICES, tuple(TARGET_DELIMITER + c for c in choices), choices,
                      row["label"])


def load(data_dir: Path, shots: int, limit: int | None) -> LoadedTask:
    path = task_file("hellaswag", data_dir, FILE)
    return assemble("hellaswag", "multiple_choice", ("acc", "acc_norm"), jsonl_built("hellaswag", path, build_item),
                    [path], 0, limit)


def build_hub_item(index: int, row: dict) -> ChoiceItem | Skipped:
    """An item from a Rowan/hellaswag row, exactly as lm-eval's process_docs builds query, choices and gold."""
    fields = ("activity_label", "ctx_a", "ctx_b")
    if not all(isinstance(row.get(field), str) for field in fields):
        return Skipped(index, f"{', '.join(fields)} must be strings")
    label = row.get("label")
    gold = int(label) if isinstance(label, (str, int)) and str(label).isdigit() else None
    why = string_list_problem("endings", row.get("endings"), N_CHOICES) or checked_gold(gold, N_CHOICES)
    if why:
        return Skipped(index, why)
    query = preprocess(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
    choices = tuple(preprocess(ending) for ending in row["endings"])
    return ChoiceItem(index, (query,) * N_CHOICES, tuple(TARGET_DELIMITER + c for c in choices), choices, gold)


def load_hub(shots: int, limit: int | None) -> LoadedTask:
    rows, paths = hub_rows("hellaswag", *HUB)
    built = [build_hub_item(i, row) for i, row in enumerate(rows)]
    return assemble("hellaswag", "multiple_choice", ("acc", "acc_norm"), built, paths, 0, limit)
