"""MMLU (test split, per subject), as lm-eval's default `mmlu` task (tasks/mmlu/default/_default_template_yaml).

Prompt per subject, with K few-shot examples = the first K rows of its dev split (lm-eval's `first_n` sampler):
    "The following are multiple choice questions (with answers) about {subject with spaces}.\\n\\n"
    K x "{question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer: {letter}\\n\\n"
    "{question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:"
continuations " A", " B", " C", " D"; metric acc. Subjects are those with a test CSV in the data folder; each
subject's category comes from subject_categories.json (hendrycks/test categories.py; it files `anatomy` under
"other" where lm-eval's mmlu_stem group lists it).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from gptjax.errors import GptjaxError
from gptjax.eval.tasks.base import (
    FEWSHOT_DELIMITER,
    TARGET_DELIMITER,
    ChoiceItem,
    LoadedTask,
    Skipped,
    assemble,
    hub_config_rows,
    read_text,
    task_file,
)

LETTERS = ("A", "B", "C", "D")
CATEGORIES_FILE = "mmlu/subject_categories.json"
HUB_REPO = "cais/mmlu"  # lm-eval's mmlu dataset_path; dataset_name = the subject
BUNDLED_CATEGORIES = Path(__file__).with_name("mmlu_subject_categories.json")  # SOURCE: see mmlu_SOURCE.md
CATEGORY_KEYS = {"STEM": "stem", "humanities": "humanities", "social sciences": "social_sciences",
                 "other (business, health, misc.)": "other"}


def csv_rows(task: str, path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(read_text(task, path), newline="")))


def row_problem(row: list[str]) -> str:
    """Why a CSV row is not question, 4 choices, answer letter (empty when it is)."""
    if len(row) != 2 + len(LETTERS):
        return f"has {len(row)} columns, expected {2 + len(LETTERS)} (question, A-D, answer)"
    if row[-1].strip() not in LETTERS:
        return f"answer {row[-1]!r} is not one of A-D"
    return ""


def question_block(row: list[str]) -> str:
    options = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, row[1:5]))
    return f"{row[0].strip()}{options}\nAnswer:"


def description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def fewshot_prefix(subject: str, dev_rows: list[list[str]], shots: int) -> str:
    shots_text = "".join(question_block(row) + TARGET_DELIMITER + row[-1].strip() + FEWSHOT_DELIMITER
                         for row in dev_rows[:shots])
    return description(subject) + shots_text


def subjects_in(data_dir: Path) -> list[str]:
    subjects = sorted(p.name.removesuffix("_test.csv") for p in (data_dir / "mmlu" / "test").glob("*_test.csv"))
    if not subjects:
        task_file("mmlu", data_dir, "mmlu/test/<subject>_test.csv")  # raises the missing-data error
    return subjects


def subject_categories(data_dir: Path) -> dict[str, str]:
    """subject -> category key (stem / humanities / social_sciences / other)."""
    path = task_file("mmlu", data_dir, CATEGORIES_FILE)
    try:
        raw = json.loads(read_text("mmlu", path))["subject_to_category"]
        return {subject: CATEGORY_KEYS[name] for subject, name in raw.items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise GptjaxError(f"task mmlu: {path} is not a subject_to_category map of the 4 MMLU categories ({e!r}); "
                          "use the shared data's subject_categories.json") from None


def subject_items(subject: str, test_rows: list[list[str]], prefix: str, limit: int | None) -> list:
    """The subject's questions (index = CSV row) after `prefix`, the first `limit` valid ones; bad rows Skipped."""
    built = []
    for i, row in enumerate(test_rows):
        why = row_problem(row)
        if why:
            built.append(Skipped(i, f"{subject}: {why}"))
            continue
        if limit and sum(isinstance(b, ChoiceItem) for b in built) >= limit:
            continue
        context = prefix + question_block(row)
        built.append(ChoiceItem(i, (context,) * len(LETTERS),
                                tuple(TARGET_DELIMITER + letter for letter in LETTERS), LETTERS,
                                LETTERS.index(row[-1].strip()), subject))
    return built


def subject_task(categories: dict[str, str], rows: dict[str, tuple[list[list[str]], list[list[str]]]],
                 paths: list[Path], shots: int, limit: int | None, where: str) -> LoadedTask:
    """The task over each subject's (test rows, dev rows): `shots` dev examples before every question."""
    built = []
    for subject, (test_rows, dev_rows) in sorted(rows.items()):
        if subject not in categories:
            raise GptjaxError(f"task mmlu: subject {subject} has no category in {where}; use the shared data's "
                              "subject_categories.json")
        dev_rows = [row for row in dev_rows if not row_problem(row)]
        if shots > len(dev_rows):
            raise GptjaxError(f"task mmlu: --shots {shots} is more than the {len(dev_rows)} dev examples of "
                              f"{subject} ({where}); use --shots {len(dev_rows)} or fewer")
        built += subject_items(subject, test_rows, fewshot_prefix(subject, dev_rows, shots), limit)
    subjects = {item.group for item in built if isinstance(item, ChoiceItem)}
    return assemble("mmlu", "multiple_choice", ("acc",), built, paths, shots, None,
                    {subject: categories[subject] for subject in sorted(subjects)})


def load(data_dir: Path, shots: int, limit: int | None) -> LoadedTask:
    categories = subject_categories(data_dir)
    rows, paths = {}, [data_dir / CATEGORIES_FILE]
    for subject in subjects_in(data_dir):
        test_path = task_file("mmlu", data_dir, f"mmlu/test/{subject}_test.csv")
        paths.append(test_path)
        dev_rows = []
        if shots:
            dev_path = task_file("mmlu", data_dir, f"mmlu/dev/{subject}_dev.csv")
            paths.append(dev_path)
            dev_rows = csv_rows("mmlu", dev_path)
        rows[subject] = (csv_rows("mmlu", test_path), dev_rows)
    return subject_task(categories, rows, paths, shots, limit, str(data_dir / CATEGORIES_FILE))


def hub_row(row: dict) -> list[str]:
    """A cais/mmlu row as the CSV columns: question, A-D, answer letter."""
    answer = row.get("answer")
    letter = LETTERS[answer] if isinstance(answer, int) and 0 <= answer < len(LETTERS) else str(answer)
    return [row.get("question"), *list(row.get("choices") or []), letter]


def load_hub(shots: int, limit: int | None) -> LoadedTask:
    """MMLU from cais/mmlu (lm-eval's dataset: one config per subject, test split, few-shot from dev), subjects and
    categories from the bundled copy of hendrycks/test's categories."""
    categories = bundled_categories()
    subjects = tuple(sorted(categories))
    splits = ("test", "dev") if shots else ("test",)
    split_rows, paths = hub_config_rows("mmlu", HUB_REPO, subjects, splits)
    rows = {subject: ([hub_row(r) for r in split_rows[subject, "test"]],
                      [hub_row(r) for r in split_rows.get((subject, "dev"), [])]) for subject in subjects}
    return subject_task(categories, rows, paths, shots, limit, BUNDLED_CATEGORIES.name)


def bundled_categories() -> dict[str, str]:
    raw = json.loads(BUNDLED_CATEGORIES.read_text(encoding="utf-8"))["subject_to_category"]
    return {subject: CATEGORY_KEYS[name] for subject, name in raw.items()}
