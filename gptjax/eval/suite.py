"""Running benchmark tasks on an LM: scoring through the LM's lm-eval-style request methods, metrics with standard
errors as lm-evaluation-harness 0.4.x computes them, results.json, the per-item samples log and a markdown table.

Metric definitions (lm_eval/api/task.py process_results, lm_eval/api/metrics.py):
- multiple choice: acc = [argmax_i ll_i == gold], acc_norm = [argmax_i ll_i / len(choice_i in characters) == gold],
  averaged; stderr = sample standard deviation / sqrt(n) (`mean_stderr`).
- lambada: acc = mean is_greedy (stderr as above); perplexity = exp(-mean ll), stderr by bootstrap (lm-eval's
  `bootstrap_stderr`, 100k resamples by default; resampled with numpy here, so equal in distribution, not in digits).
- wikitext2: word_perplexity = exp(-sum ll / sum words), byte_perplexity = exp(-sum ll / sum bytes), bits_per_byte =
  -sum ll / sum bytes / ln 2. lm-eval reports no stderr for these ("N/A"); here they get a bootstrap over documents.
- mmlu: acc per subject; a category's acc is the size-weighted mean of its subjects (lm-eval's weight_by_size=True,
  i.e. the mean over all its questions) and its stderr the pooled one (`pooled_sample_stderr`); overall mmlu
  aggregates the four categories the same way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from gptjax.errors import GptjaxError
from gptjax.eval.requests import encode_pair
from gptjax.eval.tasks import load_task
from gptjax.eval.tasks.base import ChoiceItem, ContinuationItem, LoadedTask
from gptjax.fileio import atomic_open, write_json_atomic

BOOTSTRAP_ITERS = 100_000  # lm-eval's default bootstrap_iters
BOOTSTRAP_CHUNK = 1000
ITEMS_PER_CALL = 256  # items scored per engine call: big enough to batch well, small enough for a live progress bar
SKIPPED_EXAMPLES = 5


@dataclasses.dataclass
class TaskRun:
    """A scored task: its metrics (results.json entry) and one sample record per item."""
    task: LoadedTask
    metrics: dict
    samples: list[dict]


# ---- statistics -------------------------------------------------------------------------------------------------

def mean_stderr(values: Sequence[float]) -> float | None:
    """Sample standard deviation / sqrt(n), lm-eval's stderr of a mean (None for fewer than 2 values: "N/A")."""
    if len(values) < 2:
        return None
    return float(np.std(np.asarray(values, np.float64), ddof=1) / math.sqrt(len(values)))


def bootstrap_stderr(statistic: Callable[[np.ndarray], np.ndarray], n: int, iters: int = BOOTSTRAP_ITERS,
                     seed: int = 0) -> float | None:
    """Sample stddev of `statistic` over `iters` resamples (with replacement) of n items. `statistic` maps an
    [R, n] matrix of item indices to R values."""
    if n < 2 or iters < 2:
        return None
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, (min(BOOTSTRAP_CHUNK, iters - done), n)))
              for done in range(0, iters, BOOTSTRAP_CHUNK)]
    return float(np.std(np.concatenate(values), ddof=1))


def pooled_stderr(stderrs: Sequence[float], sizes: Sequence[int]) -> float | None:
    """lm-eval's pooled_sample_stderr: the stderr of a size-weighted mean of groups from their stderrs."""
    if any(s is None for s in stderrs) or sum(sizes) <= len(sizes):
        return None
    pooled_var = sum((n - 1) * se ** 2 * n for se, n in zip(stderrs, sizes)) / (sum(sizes) - len(sizes))
    return float(math.sqrt(pooled_var / sum(sizes)))


def weighted_mean(values: Sequence[float], sizes: Sequence[int]) -> float:
    return float(sum(v * n for v, n in zip(values, sizes)) / sum(sizes))


# ---- scoring ----------------------------------------------------------------------------------------------------

def chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def fits_the_window(lm, requests: Sequence[tuple[str, str]]) -> bool:
    """Whether every continuation of an item fits the model's window (longer ones cannot be scored: lm-eval's
    slicing would silently score part of them; here the item is skipped and counted as `too_long`)."""
    tokenizer = getattr(lm, "tokenizer", None)
    if tokenizer is None:  # the engine itself reports what it cannot score
        return True
    eot = tokenizer.eot_id
    return all(len(encode_pair(tokenizer.encode, context, continuation, eot)[1]) <= lm.config.block_size
               for context, continuation in requests)


def score_requests(lm, items: Sequence, requests_of: Callable, batch_size: int, bar) -> tuple[list, int]:
    """Per item, its (loglikelihood, is_greedy) results; and how many requests were truncated from the left."""
    per_item, n_truncated = [], 0
    for part in chunks(items, ITEMS_PER_CALL):
        requests = [request for item in part for request in requests_of(item)]
        results = lm.loglikelihood(requests, batch_size=batch_size)
        n_truncated += int(getattr(results, "n_truncated", 0))
        start = 0
        for item in part:
            count = len(requests_of(item))
            per_item.append([(float(ll), bool(greedy)) for ll, greedy in results[start:start + count]])
            start += count
        bar.update(len(part))
    return per_item, n_truncated


def choice_requests(item: ChoiceItem) -> list[tuple[str, str]]:
    return list(zip(item.contexts, item.continuations))


def choice_sample(item: ChoiceItem, results: list[tuple[float, bool]]) -> dict:
    """lm-eval's multiple-choice process_results for one item (ties go to the first choice, as np.argmax)."""
    lls = np.array([ll for ll, _ in results])
    lengths = np.array([float(len(text)) for text in item.choice_texts])
    pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
    return {"index": item.index, **({"group": item.group} if item.group else {}),
            "loglikelihoods": lls.tolist(), "is_greedy": [g for _, g in results], "gold": item.gold,
            "pred": pred, "pred_norm": pred_norm, "acc": float(pred == item.gold),
            "acc_norm": float(pred_norm == item.gold)}


def continuation_sample(item: ContinuationItem, results: list[tuple[float, bool]]) -> dict:
    (ll, greedy), = results
    return {"index": item.index, "loglikelihood": ll, "is_greedy": greedy, "acc": float(greedy)}


# ---- metrics ----------------------------------------------------------------------------------------------------

def accuracy_metrics(samples: Sequence[dict], names: Sequence[str]) -> dict:
    out = {}
    for name in names:
        values = [s[name] for s in samples]
        out[name], out[f"{name}_stderr"] = float(np.mean(values)), mean_stderr(values)
    return out


def group_metrics(samples: Sequence[dict], group_of: dict[str, str]) -> dict:
    """MMLU: acc per subject, per category (size-weighted, pooled stderr) and overall (over the categories)."""
    subjects = {g: accuracy_metrics([s for s in samples if s["group"] == g], ["acc"]) for g in group_of}
    for g in subjects:
        subjects[g]["n"] = sum(s["group"] == g for s in samples)
    categories = {}
    for category in sorted(set(group_of.values())):
        members = [subjects[g] for g in group_of if group_of[g] == category]
        sizes = [m["n"] for m in members]
        categories[category] = {"acc": weighted_mean([m["acc"] for m in members], sizes),
                                "acc_stderr": pooled_stderr([m["acc_stderr"] for m in members], sizes),
                                "n": sum(sizes)}
    sizes = [c["n"] for c in categories.values()]
    overall = {"acc": weighted_mean([c["acc"] for c in categories.values()], sizes),
               "acc_stderr": pooled_stderr([c["acc_stderr"] for c in categories.values()], sizes)}
    return {**overall, "categories": categories, "subjects": subjects}


def perplexity_metrics(lls: np.ndarray, iters: int) -> dict:
    return {"perplexity": float(math.exp(-lls.mean())),
            "perplexity_stderr": bootstrap_stderr(lambda idx: np.exp(-lls[idx].mean(axis=1)), len(lls), iters)}


def rolling_metrics(lls: np.ndarray, words: np.ndarray, n_bytes: np.ndarray, iters: int) -> dict:
    definitions = {"word_perplexity": (words, lambda ll, n: np.exp(-ll / n)),
                   "byte_perplexity": (n_bytes, lambda ll, n: np.exp(-ll / n)),
                   "bits_per_byte": (n_bytes, lambda ll, n: -ll / n / math.log(2))}
    out = {}
    for name, (counts, value) in definitions.items():
        out[name] = float(value(lls.sum(), counts.sum()))
        out[f"{name}_stderr"] = bootstrap_stderr(
            lambda idx: value(lls[idx].sum(axis=1), counts[idx].sum(axis=1)), len(lls), iters)
    return out


def run_task(lm, task: LoadedTask, batch_size: int = 32, bootstrap_iters: int = BOOTSTRAP_ITERS,
             progress: bool = True) -> TaskRun:
    """Scores every item of `task` and computes its metrics."""
    n_truncated, items = 0, task.items
    if task.kind == "multiple_choice":
        items = [item for item in items if fits_the_window(lm, choice_requests(item))]
    elif task.kind == "loglikelihood":
        items = [item for item in items if fits_the_window(lm, [(item.context, item.continuation)])]
    bar = tqdm(total=len(items), desc=task.name, unit="item", disable=not progress)
    if task.kind == "multiple_choice":
        results, n_truncated = score_requests(lm, items, choice_requests, batch_size, bar)
        samples = [choice_sample(item, r) for item, r in zip(items, results)]
        metrics = (group_metrics(samples, task.group_categories) if task.group_categories
                   else accuracy_metrics(samples, task.metrics))
        metrics["chance"] = float(np.mean([1 / len(item.contexts) for item in items]))
    elif task.kind == "loglikelihood":
        results, n_truncated = score_requests(lm, items, lambda item: [(item.context, item.continuation)],
                                              batch_size, bar)
        samples = [continuation_sample(item, r) for item, r in zip(items, results)]
        metrics = {**accuracy_metrics(samples, ["acc"]),
                   **perplexity_metrics(np.array([s["loglikelihood"] for s in samples]), bootstrap_iters)}
    else:
        lls = []
        for item in task.items:  # documents are long: one engine call each keeps the bar moving
            lls += lm.loglikelihood_rolling([item.text], batch_size=batch_size)
            bar.update(1)
        samples = [{"index": item.index, "loglikelihood": float(ll), "words": item.n_words, "bytes": item.n_bytes}
                   for item, ll in zip(task.items, lls)]
        metrics = rolling_metrics(np.array(lls, np.float64), np.array([i.n_words for i in task.items], np.float64),
                                  np.array([i.n_bytes for i in task.items], np.float64), bootstrap_iters)
    bar.close()
    if not items:
        raise GptjaxError(f"task {task.name}: every item's continuation is longer than the model's block size "
                          f"{lm.config.block_size}; evaluate a model with a longer context")
    metrics.update(n=len(items), shots=task.shots, truncated=n_truncated, too_long=len(task.items) - len(items),
                   skipped=len(task.skipped),
                   skipped_examples=[f"row {s.index}: {s.reason}" for s in task.skipped[:SKIPPED_EXAMPLES]])
    return TaskRun(task, metrics, [{"task": task.name, **s} for s in samples])


# ---- reports ----------------------------------------------------------------------------------------------------

def data_digest(files: dict[str, str]) -> dict:
    """The files a task read; `sha256` is the one file's, or for several that of their `sha256sum`-style listing."""
    if len(files) == 1:
        (sha,) = files.values()
    else:
        sha = hashlib.sha256("".join(f"{sha}  {path}\n" for path, sha in sorted(files.items())).encode()).hexdigest()
    return {"sha256": sha, "files": files}


def model_info(lm, workdir: str) -> dict:
    from gptjax.model.transformer import count_params

    return {"workdir": str(workdir), "step": lm.step, "params": int(count_params(lm.params)),
            "config": dataclasses.asdict(lm.config)}


def results_document(runs: Sequence[TaskRun], model: dict) -> dict:
    return {"results": {run.task.name: run.metrics for run in runs}, "model": model,
            "data": {run.task.name: data_digest(run.task.files) for run in runs}}


def format_value(value) -> str:
    return "N/A" if value is None else f"{value:.4f}"


def markdown_table(results: dict) -> str:
    """One row per task and metric (MMLU categories indented below mmlu), value ± stderr, n."""
    lines = ["| task | shots | metric | value | ± stderr | n |", "|---|---:|---|---:|---:|---:|"]
    metric_names = ("acc", "acc_norm", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")
    for task, metrics in results.items():
        rows = [(task, metrics)] + [(f"  {task}_{c}", m) for c, m in metrics.get("categories", {}).items()]
        for label, entry in rows:
            for name in metric_names:
                if name in entry:
                    lines.append(f"| {label} | {metrics['shots']} | {name} | {format_value(entry[name])} | "
                                 f"{format_value(entry.get(name + '_stderr'))} | {entry.get('n', metrics['n'])} |")
    return "\n".join(lines)


def write_samples(path: str | Path, runs: Sequence[TaskRun]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        for run in runs:
            for sample in run.samples:
                f.write(json.dumps(sample, ensure_ascii=False) + "\n")


def load_tasks(task_names: Sequence[str], data_dir: Path | None, shots: int = 0,
               limit: int | None = None) -> list[LoadedTask]:
    """Every task's items (from the Hub when `data_dir` is None), so bad data fails before a model is loaded or
    anything is scored."""
    tasks = [load_task(name, data_dir, shots, limit) for name in task_names]
    for task in tasks:
        if not task.items:
            raise GptjaxError(f"task {task.name}: no valid items in {', '.join(task.files)} ({len(task.skipped)} "
                              f"malformed rows skipped, e.g. {task.skipped[0].reason if task.skipped else '-'}); "
                              "check the data file")
    return tasks


def evaluate(lm, workdir: str, tasks: Sequence[LoadedTask], batch_size: int = 32, out: str | Path | None = None,
             log_samples: str | Path | None = None, bootstrap_iters: int = BOOTSTRAP_ITERS,
             progress: bool = True) -> dict:
    """Runs the tasks, writes the reports asked for (the samples JSONL, then results.json: present means complete)
    and returns the results document."""
    runs = [run_task(lm, task, batch_size, bootstrap_iters, progress) for task in tasks]
    document = results_document(runs, model_info(lm, workdir))
    if log_samples:
        write_samples(log_samples, runs)
    if out:
        write_json_atomic(out, document)
    return document
