"""Item-level cross-check of `gptjax eval --tasks` against lm-evaluation-harness's HF backend, and chance level.

The same random GPT-2-BPE weights (conftest's gpt2_bpe_model) are scored by gptjax (native export, gptjax.eval.suite)
and by lm-eval's `hf` model (the HF export) on the same fixture rows. lm-eval reads them through task YAMLs written
here that `include` lm-eval's own installed task configs (so its prompts, few-shot sampler and process_results are
used as they are) and only swap the dataset for datasets' offline "json" loader over the fixture rows converted to
the field layout those configs expect (the conversions below; nothing is downloaded). Compared: every choice's
log-likelihood (≤1e-4), acc / acc_norm / is_greedy per item, the aggregated metrics, and WikiText rolling
log-likelihoods per document.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gptjax.eval.tasks import wikitext

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow  # minutes on 2 shared cores: ~3,000 requests scored by each side

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "eval"
LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"
MMLU_SUBJECTS = ("conceptual_physics", "human_sexuality", "management", "world_religions")
ZERO_SHOT = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "lambada", "mmlu", "wikitext2")
# Both sides sum float32 token log-probs; this random model's sums reach -1200, where one float32 ulp is 1.2e-4, so a
# difference passes at 1e-4 absolute or at 2.5e-7 relative (about 2 ulps).
LL_ABS_TOLERANCE, LL_REL_TOLERANCE = 1e-4, 2.5e-7


# ---- fixture rows in the field layout of lm-eval's HF datasets ------------------------------------------------------

def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def hellaswag_original(row: dict) -> dict:
    """activity_label / ctx_a / ctx_b as Rowan/hellaswag has them: ActivityNet contexts end in ctx_b, the lower-case
    fragment after the last ". " (see gptjax/eval/tasks/hellaswag.py); WikiHow ones have an empty ctx_b."""
    label, _, ctx = row["context"].partition(": ")
    head, sep, tail = ctx.rpartition(". ")
    ctx_a, ctx_b = (head + ".", tail) if sep and tail[:1].islower() else (ctx, "")
    return {"activity_label": label, "ctx_a": ctx_a, "ctx_b": ctx_b, "endings": row["endings"],
            "label": str(row["label"])}


def arc_original(i: int, row: dict) -> dict:
    letters = "ABCDE"[: len(row["choices"])]
    return {"id": str(i), "question": row["query"].removeprefix("Question: "),
            "choices": {"text": row["choices"], "label": list(letters)}, "answerKey": letters[row["gold"]]}


def piqa_original(row: dict) -> dict:
    return {"goal": row["query"].removeprefix("Question: ").removesuffix("\n"), "sol1": row["choices"][0],
            "sol2": row["choices"][1], "label": row["gold"]}


def winogrande_original(row: dict) -> dict:
    """sentence with its "_" blank: the options' common prefix, then the blank, then the continuation. lm-eval
    rebuilds exactly the file's context_options from it (prefix + rest of each option)."""
    first, second = row["context_options"]
    n = 0
    while n < min(len(first), len(second)) and first[n] == second[n]:
        n += 1
    return {"sentence": first[:n] + "_ " + row["continuation"], "option1": first[n:], "option2": second[n:],
            "answer": str(row["gold"] + 1)}


def mmlu_original(row: list[str]) -> dict:
    return {"question": row[0], "choices": row[1:5], "answer": "ABCD".index(row[5].strip())}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def task_yaml(name: str, include: Path, data_files: dict[str, Path], extra: str = "") -> str:
    files = "\n".join(f"    {split}: {path}" for split, path in data_files.items())
    return (f"include: {include}\ntask: {name}\ntag: gptjax_crosscheck\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n{files}\n{extra}")


def write_task_configs(root: Path) -> dict[str, str]:
    """Custom lm-eval task YAMLs over the fixtures; returns gptjax task (or mmlu subject) -> lm-eval task name."""
    data = root / "data"
    data.mkdir()
    foundry = FIXTURES / "llm_foundry_evals"
    (root / "crosscheck_utils.py").write_text(
        "from lm_eval.tasks.hellaswag.utils import process_docs as lm_eval_process_docs\n")
    configs = {
        "hellaswag": task_yaml("gx_hellaswag", LM_EVAL_TASKS / "hellaswag/hellaswag.yaml",
                               {"validation": write_jsonl(data / "hellaswag.jsonl", [
                                   hellaswag_original(r) for r in jsonl(FIXTURES / "hellaswag/hellaswag_val.jsonl")])},
                               "training_split: null\nprocess_docs: !function crosscheck_utils.lm_eval_process_docs\n"),
        "lambada": task_yaml("gx_lambada", LM_EVAL_TASKS / "lambada/lambada_openai.yaml",
                             {"test": write_jsonl(data / "lambada.jsonl", [
                                 {"text": r["context"] + " " + r["continuation"]}
                                 for r in jsonl(FIXTURES / "lambada/lambada_openai.jsonl")])}),
        "piqa": task_yaml("gx_piqa", LM_EVAL_TASKS / "piqa/piqa.yaml",
                          {"validation": write_jsonl(data / "piqa.jsonl", [piqa_original(r) for r in jsonl(
                              foundry / "piqa.jsonl")])}, "training_split: null\n"),
        "winogrande": task_yaml("gx_winogrande", LM_EVAL_TASKS / "winogrande/default.yaml",
                                {"validation": write_jsonl(data / "winogrande.jsonl", [
                                    winogrande_original(r) for r in jsonl(foundry / "winogrande.jsonl")])},
                                "training_split: null\n"),
        "wikitext2": task_yaml("gx_wikitext", LM_EVAL_TASKS / "wikitext/wikitext.yaml",
                               {"test": write_jsonl(data / "wikitext.jsonl", [
                                   {"page": page} for page in wikitext.documents(
                                       (FIXTURES / "wikitext2/test.txt").read_text(encoding="utf-8"))])},
                               "training_split: null\nvalidation_split: null\n"),
    }
    for name in ("arc_easy", "arc_challenge"):
        rows = [arc_original(i, r) for i, r in enumerate(jsonl(foundry / f"{name}.jsonl"))]
        configs[name] = task_yaml(f"gx_{name}", LM_EVAL_TASKS / "arc/arc_easy.yaml",
                                  {"test": write_jsonl(data / f"{name}.jsonl", rows)},
                                  "training_split: null\nvalidation_split: null\n")
    for subject in MMLU_SUBJECTS:
        splits = {}
        for split in ("test", "dev"):
            with open(FIXTURES / f"mmlu/{split}/{subject}_{split}.csv", newline="", encoding="utf-8") as f:
                splits[split] = write_jsonl(data / f"mmlu_{subject}_{split}.jsonl",
                                            [mmlu_original(r) for r in csv.reader(f)])
        description = json.dumps(f"The following are multiple choice questions (with answers) about "
                                  f"{subject.replace('_', ' ')}.\n\n")
        configs[subject] = task_yaml(f"gx_mmlu_{subject}", LM_EVAL_TASKS / "mmlu/default/_default_template_yaml",
                                     splits, f"description: {description}\n")
    for name, text in configs.items():
        (root / f"gx_{name}.yaml").write_text(text, encoding="utf-8")
    return {name: text.split("task: ", 1)[1].split("\n", 1)[0] for name, text in configs.items()}


# ---- the two runs ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm_eval_runs(gpt2_bpe_model, tmp_path_factory):
    """lm-eval's per-item samples and results: 0-shot on every task, 5-shot on the MMLU subjects."""
    import os

    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                      HF_DATASETS_CACHE=str(tmp_path_factory.mktemp("hf_datasets_cache")))
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("lm_eval_tasks")
    names = write_task_configs(root)
    manager = TaskManager(include_path=str(root), include_defaults=False)
    model = HFLM(pretrained=str(gpt2_bpe_model["hf"]), device="cpu", batch_size=32, dtype="float32")
    mmlu_tasks = [names[s] for s in MMLU_SUBJECTS]
    zero = lm_eval.simple_evaluate(model=model, tasks=[n for k, n in names.items() if k not in MMLU_SUBJECTS]
                                   + mmlu_tasks, num_fewshot=0, task_manager=manager, log_samples=True,
                                   bootstrap_iters=0)
    five = lm_eval.simple_evaluate(model=model, tasks=mmlu_tasks, num_fewshot=5, task_manager=manager,
                                   log_samples=True, bootstrap_iters=0)
    return {"names": names, 0: zero, 5: five}


@pytest.fixture(scope="module")
def gptjax_runs(gpt2_bpe_model):
    """gptjax's TaskRuns (metrics + per-item samples) on the same fixtures: 0-shot, and MMLU 5-shot."""
    import gptjax
    from gptjax.eval.suite import run_task
    from gptjax.eval.tasks import load_task

    lm = gptjax.load(gpt2_bpe_model["gptjax"])
    runs = {name: run_task(lm, load_task(name, FIXTURES), 32, 2000, progress=False) for name in ZERO_SHOT}
    runs["mmlu_5shot"] = run_task(lm, load_task("mmlu", FIXTURES, shots=5), 32, 2000, progress=False)
    return runs


def lm_eval_samples(runs, shots: int, task: str) -> dict[int, dict]:
    return {s["doc_id"]: s for s in runs[shots]["samples"][task]}


def lm_eval_choice_lls(sample: dict) -> list[float]:
    return [float(resp[0]) for resp in sample["filtered_resps"]]


def assert_close(mine: float, theirs: float, what) -> float:
    """Asserts two summed log-likelihoods agree within the tolerances; returns their absolute difference."""
    diff = abs(mine - theirs)
    assert diff <= max(LL_ABS_TOLERANCE, LL_REL_TOLERANCE * abs(theirs)), (what, mine, theirs)
    return diff


def compare_choice_task(items, gx_samples: list[dict], lm_samples: dict[int, dict], min_items: int = 100) -> float:
    """Asserts equal request strings, per-choice log-likelihoods (within tolerance), greedy flags, acc and acc_norm;
    returns the largest log-likelihood difference."""
    assert len(gx_samples) == len(lm_samples) >= min_items
    worst = 0.0
    for item, mine in zip(items, gx_samples):
        theirs = lm_samples[mine["index"]]
        assert [tuple(a) for a in theirs["arguments"]] == list(zip(item.contexts, item.continuations))
        for k, their_ll in enumerate(lm_eval_choice_lls(theirs)):
            worst = max(worst, assert_close(mine["loglikelihoods"][k], their_ll, (mine["index"], k)))
        assert mine["is_greedy"] == [bool(r[1]) for r in theirs["filtered_resps"]]
        assert mine["acc"] == theirs["acc"]
        if "acc_norm" in theirs:
            assert mine["acc_norm"] == theirs["acc_norm"]
    return worst


@pytest.mark.parametrize("task", ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande"])
def test_multiple_choice_items_equal_lm_eval(task, gptjax_runs, lm_eval_runs):
    name = lm_eval_runs["names"][task]
    run = gptjax_runs[task]
    worst = compare_choice_task(run.task.items, run.samples, lm_eval_samples(lm_eval_runs, 0, name))
    theirs = lm_eval_runs[0]["results"][name]
    mine = gptjax_runs[task].metrics
    for metric in gptjax_runs[task].task.metrics:
        assert mine[metric] == pytest.approx(theirs[f"{metric},none"], abs=1e-12)
    print(f"{task}: max |ll diff| {worst:.2e} over {len(gptjax_runs[task].samples)} items")


@pytest.mark.parametrize("shots", [0, 5])
def test_mmlu_items_equal_lm_eval(shots, gptjax_runs, lm_eval_runs, gpt2_bpe_model):
    import transformers

    run = gptjax_runs["mmlu" if shots == 0 else "mmlu_5shot"]
    worst = 0.0
    for subject in MMLU_SUBJECTS:
        items = [item for item in run.task.items if item.group == subject]
        mine = [s for s in run.samples if s["group"] == subject]
        theirs = lm_eval_samples(lm_eval_runs, shots, lm_eval_runs["names"][subject])
        assert len(mine) == len(theirs) == 25
        worst = max(worst, compare_choice_task(items, mine, theirs, min_items=25))
        assert run.metrics["subjects"][subject]["acc"] == pytest.approx(
            lm_eval_runs[shots]["results"][lm_eval_runs["names"][subject]]["acc,none"], abs=1e-12)
    # Truncated requests, counted independently with the HF tokenizer: lm-eval's whole encoding longer than the
    # block + 1 (most 5-shot prompts here, no 0-shot one).
    tokenizer = transformers.AutoTokenizer.from_pretrained(gpt2_bpe_model["hf"])
    expected = sum(len(tokenizer(c + x)["input_ids"]) > 257
                   for item in run.task.items for c, x in zip(item.contexts, item.continuations))
    assert run.metrics["truncated"] == expected and (expected > 300 if shots else expected == 0)
    print(f"mmlu {shots}-shot: max |ll diff| {worst:.2e} over {len(run.samples)} items, {expected} truncated")


def compare_single_requests(run, lm_samples: dict[int, dict], request_of) -> float:
    """One request per item (lambada, wikitext): asserts equal request strings and log-likelihoods (and greedy flags
    where lm-eval returns them); returns the largest log-likelihood difference."""
    assert len(run.samples) == len(lm_samples)
    worst = 0.0
    for item, sample in zip(run.task.items, run.samples):
        theirs = lm_samples[sample["index"]]
        assert tuple(theirs["arguments"][0]) == request_of(item)
        response = theirs["filtered_resps"][0]
        their_ll = float(response[0] if isinstance(response, (tuple, list)) else response)
        worst = max(worst, assert_close(sample["loglikelihood"], their_ll, sample["index"]))
        if "is_greedy" in sample:
            assert sample["is_greedy"] == bool(response[1])
    return worst


def test_lambada_items_equal_lm_eval(gptjax_runs, lm_eval_runs):
    name = lm_eval_runs["names"]["lambada"]
    run = gptjax_runs["lambada"]
    worst = compare_single_requests(run, lm_eval_samples(lm_eval_runs, 0, name),
                                    lambda item: (item.context, item.continuation))
    assert len(run.samples) == 100
    results = lm_eval_runs[0]["results"][name]
    assert run.metrics["acc"] == results["acc,none"]
    assert run.metrics["perplexity"] == pytest.approx(results["perplexity,none"], rel=1e-4)
    print(f"lambada: max |ll diff| {worst:.2e} over {len(run.samples)} items")


def test_wikitext_rolling_equal_lm_eval(gptjax_runs, lm_eval_runs):
    name = lm_eval_runs["names"]["wikitext2"]
    run = gptjax_runs["wikitext2"]
    worst = compare_single_requests(run, lm_eval_samples(lm_eval_runs, 0, name), lambda item: (item.text,))
    assert len(run.samples) == 4
    results = lm_eval_runs[0]["results"][name]
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert run.metrics[metric] == pytest.approx(results[f"{metric},none"], rel=1e-5)
    print(f"wikitext2: max |ll diff| {worst:.2e} over {len(run.samples)} documents")


@pytest.mark.parametrize("task", ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "mmlu",
                                  "mmlu_5shot"])
def test_random_model_scores_chance(task, gptjax_runs):
    """A random-init model is within 3 standard errors of chance on every multiple-choice task (this reuses the
    cross-check's gptjax run: the same random model on the same fixtures)."""
    metrics = gptjax_runs[task].metrics
    for name in ("acc", "acc_norm"):
        if name in metrics:
            assert abs(metrics[name] - metrics["chance"]) <= 3 * metrics[f"{name}_stderr"], (task, name, metrics)
