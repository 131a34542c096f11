"""The benchmark tasks `gptjax eval --tasks` runs: name -> loader of local data files (laid out as shared/data), and
name -> loader of the Hugging Face dataset lm-eval's task reads (its dataset id, config and split).

Each loader is `(data_dir, shots, limit) -> LoadedTask` (Hub: `(shots, limit)`) with the prompts already built as
lm-eval builds them; the scoring, metrics and reports live in gptjax.eval.suite.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from gptjax.errors import GptjaxError
from gptjax.eval.tasks import hellaswag, lambada, llm_foundry, mmlu, wikitext
from gptjax.eval.tasks.base import LoadedTask

Loader = Callable[[Path, int, "int | None"], LoadedTask]
HubLoader = Callable[[int, "int | None"], LoadedTask]

TASKS: dict[str, Loader] = {
    "hellaswag": hellaswag.load,
    "mmlu": mmlu.load,
    "lambada": lambada.load,
    **{name: functools.partial(llm_foundry.load, name) for name in llm_foundry.FILES},
    "wikitext2": wikitext.load,
}
HUB_TASKS: dict[str, HubLoader] = {
    "hellaswag": hellaswag.load_hub,
    "mmlu": mmlu.load_hub,
    "lambada": lambada.load_hub,
    **{name: functools.partial(llm_foundry.load_hub, name) for name in llm_foundry.FILES},
    "wikitext2": wikitext.load_hub,
}


def parse_task_names(spec: str) -> list[str]:
    """Task names from a comma-separated list, in order, without repeats; an unknown name lists the known ones."""
    names = list(dict.fromkeys(name.strip() for name in spec.split(",") if name.strip()))
    unknown = [name for name in names if name not in TASKS]
    if unknown or not names:
        raise GptjaxError(f"unknown task {', '.join(unknown) or '(none given)'} in --tasks {spec!r}; known tasks: "
                          f"{', '.join(TASKS)}")
    return names


def load_task(name: str, data_dir: Path | None, shots: int = 0, limit: int | None = None) -> LoadedTask:
    """Task `name` from `data_dir`, or from the Hugging Face Hub (through its cache) when `data_dir` is None."""
    if data_dir is None:
        return HUB_TASKS[name](shots, limit)
    return TASKS[name](Path(data_dir), shots, limit)
