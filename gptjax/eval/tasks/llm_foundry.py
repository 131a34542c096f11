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
    hub_rows,
    jsonl_built,
    string_list_problem,
    task_file,
)

FILES = {"arc_easy": "llm_foundry_evals/arc_easy.jsonl", "arc_challenge": "llm_foundry_evals/arc_challenge.jsonl",
         "piqa": "llm_foundry_evals/piqa.jsonl", "winogrande": "llm_foundry_evals/winogrande.jsonl"}
QUESTION_PREFIX = "Question: "
ANSWER_CUE = "\nAnswer:"
N_CHOICES = {"arc_easy": None, "arc_challenge": None, "piqa": 2, "winogrande": 2}
# lm-eval's dataset_path, dataset_name and evaluated split of each task
HUB = {"arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
       "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
       "piqa": ("baber/piqa", "default", "validation"),
       "winogrande": ("allenai/winogrande", "winogrande_xl", "validation")}


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


def hub_row(task: str, row: dict) -> dict:
    """A row of the task's Hub dataset in the layout the builders read (lm-eval's prompts come out unchanged):
    ARC's question and labelled choices, PIQA's goal and two solutions, WinoGrande's sentence with its "_" blank."""
    try:
        if task == "winogrande":
            sentence = row["sentence"]
            blank = sentence.index("_")
            return {"context_options": [sentence[:blank] + row["option1"], sentence[:blank] + row["option2"]],
                    "continuation": sentence[blank + 1:], "gold": {"1": 0, "2": 1}.get(row["answer"])}
        if task == "piqa":
            return {"query": QUESTION_PREFIX + row["goal"] + "\n", "choices": [row["sol1"], row["sol2"]],
                    "gold": row["label"]}
        choices = row["choices"]
        return {"query": QUESTION_PREFIX + row["question"], "choices": choices["text"],
                "gold": list(choices["label"]).index(row["answerKey"])}
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}


def load_hub(task: str, shots: int, limit: int | None) -> LoadedTask:
    repo_id, config, split = HUB[task]
    rows, paths = hub_rows(task, repo_id, config, split)
    converted = [hub_row(task, row) for row in rows]
    if task == "winogrande":
        return assemble(task, "multiple_choice", ("acc",),
                        [build_winogrande_item(i, row) for i, row in enumerate(converted)], paths, 0, limit)
    built = [build_question_item(task, i, row) for i, row in enumerate(converted)]
    return assemble(task, "multiple_choice", ("acc", "acc_norm"), built, paths, 0, limit)
