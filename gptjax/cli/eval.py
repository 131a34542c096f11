"""`gptjax eval --workdir DIR_OR_EXPORT [--data DIR] [--split val] | --tasks hellaswag,mmlu,... [--data-dir PATH]`:
loss / perplexity / bits-per-byte on a prepared split (and, for a model trained on data.mixture without --data, on
each component's split: loss/<name>, ...), or benchmark tasks scored as lm-evaluation-harness does."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gptjax.errors import GptjaxError
from gptjax.fileio import check_destination, write_json_atomic

HELP = "loss / perplexity / bits-per-byte on a data split, or benchmark tasks (--tasks)"
DATA_ENV = "GPTJAX_EVAL_DATA"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="training workdir or export dir")
    p.add_argument("--data", help="prepared data dir (default: the one the model was trained on)")
    p.add_argument("--split", help="val (default) or test (default for a finetuned run: its records' test split)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens (default: all)")
    tasks = p.add_argument_group("benchmark tasks")
    tasks.add_argument("--tasks", help="comma-separated: hellaswag,mmlu,lambada,arc_easy,arc_challenge,piqa,"
                                       "winogrande,wikitext2")
    tasks.add_argument("--data-dir", help=f"benchmark data laid out as shared/data (default: ${DATA_ENV}; neither: "
                                          "each task's Hugging Face dataset, as lm-eval reads it, through the Hub "
                                          "cache)")
    tasks.add_argument("--limit", type=int, help="score only the first N items of each task (MMLU: of each subject)")
    tasks.add_argument("--shots", type=int, help="few-shot examples (MMLU, from its dev split; default 0)")
    p.add_argument("--out", help="write the results as JSON here (results.json with --tasks)")
    tasks.add_argument("--log-samples", help="write one JSON line per item here")


def benchmark_data_dir(flag: str | None) -> Path | None:
    """The local benchmark data folder (--data-dir, else $GPTJAX_EVAL_DATA); None: read each task's Hugging Face
    dataset, as lm-eval does."""
    value = flag or os.environ.get(DATA_ENV)
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        raise GptjaxError(f"benchmark data dir {path} does not exist; pass --data-dir PATH or set {DATA_ENV}")
    return path


TASK_ONLY = ("--data-dir", "--limit", "--shots", "--log-samples")  # flags of benchmark tasks
SPLIT_ONLY = ("--data", "--split", "--max-tokens")  # flags of a split's loss / perplexity


def check_arguments(args: argparse.Namespace) -> None:
    """Every flag's value, and no flag of the other mode: what was asked is done, or nothing is."""
    mode, others = ("with --tasks", SPLIT_ONLY) if args.tasks is not None else ("without --tasks", TASK_ONLY)
    misplaced = [flag for flag in others if getattr(args, flag[2:].replace("-", "_")) is not None]
    if misplaced:
        raise GptjaxError(f"{', '.join(misplaced)} {'does' if len(misplaced) == 1 else 'do'} not apply {mode} "
                          f"(benchmark tasks take {', '.join(TASK_ONLY)}; a split's loss takes "
                          f"{', '.join(SPLIT_ONLY)})")
    for name, value, least in (("--limit", args.limit, 1), ("--shots", args.shots, 0),
                               ("--batch-size", args.batch_size, 1), ("--max-tokens", args.max_tokens, 1)):
        if value is not None and value < least:
            raise GptjaxError(f"{name} must be at least {least}, got {value}")


def run_tasks(args: argparse.Namespace) -> int:
    import gptjax
    from gptjax.eval.suite import evaluate, load_tasks, markdown_table
    from gptjax.eval.tasks import parse_task_names

    names = parse_task_names(args.tasks)
    shots = args.shots or 0
    tasks = load_tasks(names, benchmark_data_dir(args.data_dir), shots, args.limit)
    lm = gptjax.load(args.workdir)
    document = evaluate(lm, args.workdir, tasks, args.batch_size, args.out, args.log_samples)
    zero_shot = [name for name, r in document["results"].items() if r["shots"] != shots]
    if zero_shot:
        print(f"gptjax: {', '.join(zero_shot)} ran 0-shot (no few-shot split in the data)", file=sys.stderr)
    print(markdown_table(document["results"]))
    return 0


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    check_arguments(args)
    check_destination(args.out, "--out")
    check_destination(args.log_samples, "--log-samples")
    if args.tasks is not None:
        return run_tasks(args)
    import gptjax
    from gptjax.config import FINETUNE_OBJECTIVES
    from gptjax.eval.perplexity import evaluate_components, evaluate_split

    lm = gptjax.load(args.workdir)
    if lm.cfg.train.objective in FINETUNE_OBJECTIVES and not args.data:
        from gptjax.finetune.evaluate import evaluate_finetune

        document = evaluate_finetune(lm, args.workdir, gptjax.load, args.split or "test", args.batch_size, args.out)
        print(json.dumps(document["results"]))
        return 0
    from gptjax.data.sources import local_data_dir

    recorded = args.data or lm.meta.get("data_dir", "")
    if not recorded:
        raise GptjaxError("this model does not record its data dir; pass --data DIR")
    data_dir = local_data_dir(recorded, lm.cfg.data)  # a gs:// dataset is read from its local cache copy
    result = evaluate_split(lm, data_dir, args.split or "val", args.batch_size, args.max_tokens or 0)
    if not args.data:  # a model trained on data.mixture: each component's split too
        result.update(evaluate_components(lm, lm.cfg.data, args.split or "val", args.batch_size, args.max_tokens or 0))
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result))
    return 0
