"""Finetuning records read from files and split as the reference recipes split them.

sms_spam: the SMS Spam Collection (TSV `label<TAB>text`), class-balanced (every spam message and as many ham ones
sampled), shuffled and split 70/10/20 as rasbt's LLMs-from-scratch ch06 does. instruction / preference: Alpaca-style
JSON records (`instruction`, optional `input`, `output`; preference adds `chosen` and `rejected`), or chat records
(`messages`: [{"role", "content"}, ...]), split 85 % train, then 10 % test, the rest val, in file order, as ch07
does. classification: JSONL records with `text` and `label`, shuffled and split 70/10/20.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from gptjax.data.packing import shuffled_order
from gptjax.errors import GptjaxError

SPLITS = ("train", "val", "test")
DEFAULT_FILES = {
    "sms_spam": "sms_spam/SMSSpamCollection",
    "instruction": "instruction/instruction-data.json",
    "preference": "instruction/instruction-data-with-preference.json",
}
DATA_ENV = "GPTJAX_EVAL_DATA"
CHAT_ROLES = ("system", "user", "assistant")
SPLIT_SEED = 123  # rasbt's random_state for the spam balancing and shuffle (the permutation itself is gptjax's)


def records_path(task: str, data: str) -> Path:
    """The records file of `task`: `data` itself when it is a file, else the task's file under it (shared/data
    layout), `data` defaulting to $GPTJAX_EVAL_DATA."""
    root = data or os.environ.get(DATA_ENV, "")
    if not root:
        raise GptjaxError(f"finetune.task={task} needs its records: set finetune.data=FILE_OR_DIR or {DATA_ENV} "
                          f"(a folder laid out as shared/data)")
    path = Path(root)
    if path.is_dir() and task in DEFAULT_FILES:
        path = path / DEFAULT_FILES[task]
    if not path.is_file():
        raise GptjaxError(f"finetune records file {path} not found (finetune.task={task}, finetune.data={data!r}); "
                          f"point finetune.data at the file or at a folder laid out as shared/data")
    return path


def _load_json_records(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GptjaxError(f"{path} is not valid JSON ({e}); finetuning records are a JSON list or JSONL") from None
    if not isinstance(records, list):
        raise GptjaxError(f"{path} holds a JSON {type(records).__name__}, not a list of records")
    return records


def _text_field(record: Any, index: int, field: str, path: Path, required: bool = True) -> str:
    if not isinstance(record, dict):
        raise GptjaxError(f"{path}: record {index} is a {type(record).__name__}, not an object")
    value = record.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        found = "missing" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"
        raise GptjaxError(f"{path}: record {index} has no usable '{field}' ({found}); every record needs it")
    return value


def _messages(record: dict, index: int, path: Path) -> list[dict]:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise GptjaxError(f"{path}: record {index} 'messages' must be a non-empty list of {{role, content}}")
    for turn, message in enumerate(messages):
        if (not isinstance(message, dict) or message.get("role") not in CHAT_ROLES
                or not isinstance(message.get("content"), str)):
            raise GptjaxError(f"{path}: record {index} message {turn} needs 'role' ({', '.join(CHAT_ROLES)}) and a "
                              f"string 'content'")
    if not any(m["role"] == "assistant" for m in messages):
        raise GptjaxError(f"{path}: record {index} has no assistant message, so nothing to learn from it")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_instruction(path: Path, preference: bool = False) -> list[dict]:
    """Alpaca records {instruction, input, output[, chosen, rejected]} or chat records {messages}, checked."""
    records = []
    for index, record in enumerate(_load_json_records(path)):
        if isinstance(record, dict) and "messages" in record and not preference:
            records.append({"messages": _messages(record, index, path)})
            continue
        item = {"instruction": _text_field(record, index, "instruction", path),
                "input": _text_field(record, index, "input", path, required=False)}
        for field in ("chosen", "rejected") if preference else ("output",):
            item[field] = _text_field(record, index, field, path)
        records.append(item)
    if not records:
        raise GptjaxError(f"{path} holds no records")
    return records


def read_labelled(path: Path, task: str) -> list[dict]:
    """{text, label} records: the SMS Spam Collection's TSV lines, or JSONL/JSON records with those fields."""
    if task == "sms_spam":
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            label, tab, text = line.partition("\t")
            if not tab or not label.strip() or not text.strip():
                raise GptjaxError(f"{path}:{number}: expected 'LABEL<TAB>TEXT', got {line[:60]!r}")
            records.append({"text": text, "label": label.strip()})
        return records
    return [{"text": _text_field(r, i, "text", path), "label": str(_text_field(r, i, "label", path)).strip()}
            for i, r in enumerate(_load_json_records(path))]


def label_names(records: Sequence[dict], declared: Sequence[str], path: Path) -> tuple[str, ...]:
    """The class names in label-id order: `declared` (every record's label must be one), else the sorted labels."""
    found = sorted({r["label"] for r in records})
    if declared:
        unknown = sorted(set(found) - set(declared))
        if unknown:
            raise GptjaxError(f"{path}: label {unknown[0]!r} is not in finetune.labels={list(declared)}")
        return tuple(declared)
    if len(found) < 2:
        raise GptjaxError(f"{path}: every record has the label {found[0]!r}; classification needs at least two classes")
    return tuple(found)


def _cut(items: list, fractions: tuple[float, float]) -> dict[str, list]:
    n = len(items)
    n_train, n_val = int(n * fractions[0]), int(n * fractions[1])
    return {"train": items[:n_train], "val": items[n_train:n_train + n_val], "test": items[n_train + n_val:]}


def split_balanced(records: list[dict], seed: int = SPLIT_SEED) -> dict[str, list[dict]]:
    """ch06: all of the rarest class and as many sampled of every other class, shuffled, 70/10/20."""
    by_label: dict[str, list[dict]] = {}
    for record in records:
        by_label.setdefault(record["label"], []).append(record)
    smallest = min(len(v) for v in by_label.values())
    balanced = []
    for salt, label in enumerate(sorted(by_label)):
        group = by_label[label]
        balanced += [group[i] for i in sorted(shuffled_order(len(group), seed, salt)[:smallest])]
    order = shuffled_order(len(balanced), seed, len(by_label))
    return _cut([balanced[i] for i in order], (0.7, 0.1))


def split_in_order(records: list[dict]) -> dict[str, list[dict]]:
    """ch07: the first 85 % train, the next 10 % test, the rest val."""
    n_train, n_test = int(len(records) * 0.85), int(len(records) * 0.1)
    return {"train": records[:n_train], "test": records[n_train:n_train + n_test], "val": records[n_train + n_test:]}


def split_records(task: str, path: Path) -> dict[str, list[dict]]:
    """The train / val / test records of `task` read from `path`, each split non-empty."""
    if task == "sms_spam":
        splits = split_balanced(read_labelled(path, task))
    elif task == "classification":
        records = read_labelled(path, task)
        splits = _cut([records[i] for i in shuffled_order(len(records), SPLIT_SEED, 0)], (0.7, 0.1))
    else:
        splits = split_in_order(read_instruction(path, preference=task == "preference"))
    empty = [name for name in SPLITS if not splits[name]]
    if empty:
        raise GptjaxError(f"{path}: too few records to split ({sum(map(len, splits.values()))}); the {empty[0]} split "
                          f"is empty")
    return splits

