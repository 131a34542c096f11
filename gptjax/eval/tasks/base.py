"""What every task module produces: items that are pure data (prompts already built), plus what was read and skipped.

A task module turns local data files, or the rows of the Hugging Face dataset lm-eval's task reads (`hub_rows`), into
one of three item kinds, each matching an lm-eval output type:
- `ChoiceItem` (multiple_choice): one log-likelihood request per choice; acc / acc_norm over them.
- `ContinuationItem` (loglikelihood): one request; its log-likelihood (perplexity) and is-greedy flag (acc).
- `RollingItem` (loglikelihood_rolling): a whole document's log-likelihood over rolling windows.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterator, Union

from gptjax.errors import GptjaxError
from gptjax.fileio import sha256_file

TARGET_DELIMITER = " "  # lm-eval's default target_delimiter, put before every continuation
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default fewshot_delimiter, after every few-shot answer
DATA_HELP = "point --data-dir (or GPTJAX_EVAL_DATA) at a folder laid out as shared/data (see the README's eval section)"


@dataclasses.dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question: request i is (contexts[i], continuations[i]).

    `choice_texts` are lm-eval's doc_to_choice strings, whose character lengths normalise acc_norm."""
    index: int
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    choice_texts: tuple[str, ...]
    gold: int
    group: str = ""  # MMLU subject; empty elsewhere


@dataclasses.dataclass(frozen=True)
class ContinuationItem:
    index: int
    context: str
    continuation: str


@dataclasses.dataclass(frozen=True)
class RollingItem:
    """A document to score whole; `n_words` and `n_bytes` count the text before detokenization, as lm-eval does."""
    index: int
    text: str
    n_words: int
    n_bytes: int


Item = Union[ChoiceItem, ContinuationItem, RollingItem]


@dataclasses.dataclass(frozen=True)
class Skipped:
    index: int
    reason: str


@dataclasses.dataclass(frozen=True)
class LoadedTask:
    """A task ready to score: its items, the rows skipped as malformed, the files read (path -> sha256) and the
    number of few-shot examples in each prompt."""
    name: str
    kind: str  # "multiple_choice" | "loglikelihood" | "loglikelihood_rolling"
    metrics: tuple[str, ...]
    items: tuple[Item, ...]
    skipped: tuple[Skipped, ...]
    files: dict[str, str]
    shots: int
    group_categories: dict[str, str] = dataclasses.field(default_factory=dict)  # MMLU: subject -> category


PARQUET_REVISION = "refs/convert/parquet"  # the Hub's parquet conversion of every dataset with a viewer


def hub_config_rows(task: str, repo_id: str, configs: tuple[str, ...], splits: tuple[str, ...]
                    ) -> tuple[dict[tuple[str, str], list[dict]], list[Path]]:
    """The rows of every (config, split) of `repo_id` (the dataset, configs and splits of lm-eval's task YAML),
    read from the Hub's parquet conversion through huggingface_hub's cache (one snapshot), in dataset order; and
    the files read."""
    import pyarrow.parquet as pq

    from gptjax import hub

    patterns = tuple(f"{config}/{prefix}{split}/*.parquet" for config in configs for split in splits
                     for prefix in ("", "partial-"))
    snapshot = hub.snapshot(f"{repo_id}@{PARQUET_REVISION}", f"task {task}: dataset", patterns, repo_type="dataset")
    rows, paths = {}, []
    for config in configs:
        for split in splits:
            files = (sorted((snapshot.path / config / split).glob("*.parquet"))
                     or sorted((snapshot.path / config / f"partial-{split}").glob("*.parquet")))
            if not files:
                raise GptjaxError(f"task {task}: the Hub dataset {repo_id} has no {config}/{split} parquet files at "
                                  f"{snapshot.pinned_id} (in {snapshot.path}); download them online once or point "
                                  f"--data-dir at local data")
            rows[config, split] = [row for path in files for row in pq.read_table(path).to_pylist()]
            paths += files
    return rows, paths


def hub_rows(task: str, repo_id: str, config: str, split: str) -> tuple[list[dict], list[Path]]:
    """The rows of one split of one config of a Hub dataset (see `hub_config_rows`)."""
    rows, paths = hub_config_rows(task, repo_id, (config,), (split,))
    return rows[config, split], paths


def task_file(task: str, data_dir: Path, relative: str) -> Path:
    """The data file `relative` of `task` below `data_dir`, or one error naming the task, the path and the fix."""
    path = data_dir / relative
    if not path.is_file():
        raise GptjaxError(f"task {task}: data file {path} not found; {DATA_HELP}")
    return path


def read_text(task: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GptjaxError(f"task {task}: data file {path} cannot be read ({e}); {DATA_HELP}") from None


def jsonl_rows(task: str, path: Path) -> Iterator[tuple[int, dict | None]]:
    """(row index, parsed object) per non-empty line; a line that is not a JSON object yields None (to be skipped)."""
    for index, line in enumerate(line for line in read_text(task, path).splitlines() if line.strip()):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        yield index, row if isinstance(row, dict) else None


def checked_gold(gold: object, n_choices: int) -> str:
    """Why `gold` is not a valid answer index among `n_choices` (empty when it is)."""
    if isinstance(gold, bool) or not isinstance(gold, int):
        return f"answer {gold!r} is missing or not an integer"
    if not 0 <= gold < n_choices:
        return f"answer {gold} out of range for {n_choices} choices"
    return ""


def string_list_problem(field: str, value: object, length: int | None = None) -> str:
    """Why `value` is not a list of `length` strings (of at least 2 when None); empty when it is."""
    wanted = f"{length}" if length is not None else "at least 2"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"{field} must be a list of {wanted} strings, got {type(value).__name__}"
    if (len(value) != length) if length is not None else (len(value) < 2):
        return f"has {len(value)} {field}, needs {wanted}"
    return ""


def jsonl_built(task: str, path: Path, build: Callable[[int, dict], "Item | Skipped"]) -> list:
    """`build` applied to every row of a JSONL file; a line that is not a JSON object becomes a Skipped."""
    return [build(i, row) if row is not None else Skipped(i, "not a JSON object") for i, row in jsonl_rows(task, path)]


def assemble(name: str, kind: str, metrics: tuple[str, ...], built: list, paths: list[Path], shots: int,
             limit: int | None, group_categories: dict[str, str] | None = None) -> LoadedTask:
    """A LoadedTask from built rows (items and Skipped mixed): the first `limit` items (all when None or 0)."""
    items = [b for b in built if not isinstance(b, Skipped)]
    return LoadedTask(name, kind, metrics, tuple(items[:limit] if limit else items),
                      tuple(b for b in built if isinstance(b, Skipped)), {str(p): sha256_file(p) for p in paths},
                      shots, group_categories or {})
