"""ARC-Easy, ARC-Challenge, PIQA and WinoGrande from llm-foundry's local JSONL files, mapped to lm-eval's prompts.

- arc_easy / arc_challenge (lm-eval tasks/arc): context "Question: {question}\\nAnswer:", choices = the answer
  texts. The files' `query` is "Question: {question}", so "\\nAnswer:" is appended.
- piqa (lm-eval tasks/piqa): context "Question: {goal}\\nAnswer:", choices [sol1, sol2]. The file's `query` is
  "Question: {goal}\\n", so its one trailing newline is replaced by "\\nAnswer:".
- winogrande (lm-eval tasks/winogrande, partial evaluation): one context per option (the sentence up to the blank
  with the option filled in = the file's `context_options`), the shared continuation " " + the rest of the sentence;
  gold 0/1 (lm-eval maps answer "1"/"2"). lm-eval reports acc only here.
The files carry no train split, so these tasks run 0-shot whatever --shots says.
"""
from __future__ import annotations

from pathlib import Path

from gptjax.eval.tasks.base import (
    TARGET_DELIMITER,
    ChoiceItem,
    LoadedTask,
    Skipped,
    assemble,
    checked_gold,
    jsonl_built,
    string_list_problem,
    task_file,
)

FILES = {"arc_easy": "llm_foundry_evals/arc_easy.jsonl", "arc_challenge": "llm_foundry_evals/arc_challenge.jsonl",
         "piqa": "llm_foundry_evals/piqa.jsonl", "winogrande": "llm_foundry_evals/winogrande.jsonl"}
QUESTION_PREFIX = "Question: "
ANSWER_CUE = "\nAnswer:"
N_CHOICES = {"arc_easy": None, "arc_challenge": None, "piqa": 2, "winogrande": 2}


def question_prompt(query: str) -> str:
    """lm-eval's "Question: {question}\\nAnswer:" from llm-foundry's "Question: {question}" (optionally + "\\n")."""
    return query.removesuffix("\n") + ANSWER_CUE


def build_question_item(task: str, index: int, row: dict) -> ChoiceItem | Skipped:
    query, choices = row.get("query"), row.get("choices")
    if not isinstance(query, str) or not query.startswith(QUESTION_PREFIX):
        return Skipped(index, f"needs a query string starting with {QUESTION_PREFIX!r}")
    why = string_list_problem("choices", choices, N_CHOICES[task]) or checked_gold(row.get("gold"), len(choices))
    if why:
        return Skipped(index, why)
    context = question_prompt(query)
    return ChoiceItem(index, (context,) * len(choices), tuple(TARGET_DELIMITER + c for c in choices), tuple(choices),
                      row["gold"])


def build_winogrande_item(index: int, row: dict) -> ChoiceItem | Skipped:
    options, continuation = row.get("context_options"), row.get("continuation")
    if not isinstance(continuation, str):
        return Skipped(index, "continuation missing or not a string")
    why = string_list_problem("context_options", options, 2) or checked_gold(row.get("gold"), 2)
    if why:
        return Skipped(index, why)
    target = TARGET_DELIMITER + continuation.strip()
    return ChoiceItem(index, tuple(options), (target, target), tuple(options), row["gold"])


def load(task: str, data_dir: Path, shots: int, limit: int | None) -> LoadedTask:
    path = task_file(task, data_dir, FILES[task])
    if task == "winogrande":
        return assemble(task, "multiple_choice", ("acc",), jsonl_built(task, path, build_winogrande_item), [path],
                        0, limit)
    build = lambda index, row: build_question_item(task, index, row)
    return assemble(task, "multiple_choice", ("acc", "acc_norm"), jsonl_built(task, path, build), [path], 0, limit)
