"""`gptjax eval --tasks` without --data-dir reads each task's Hugging Face dataset (lm-eval's dataset id, config and
split, from the Hub's parquet conversion) through huggingface_hub's cache. Offline here: a Hub cache built from the
fixtures in the datasets' own field layouts (the conversions the lm-eval cross-check uses), so the items must equal
the ones built from the same rows as local files, which tests/test_eval_vs_lm_eval.py checks against lm-eval."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import run_cli
from test_eval_vs_lm_eval import (
    FIXTURES,
    MMLU_SUBJECTS,
    arc_original,
    hellaswag_original,
    jsonl,
    mmlu_original,
    piqa_original,
    winogrande_original,
)
from test_hub import cached_repo

from gptjax.eval.tasks import TASKS, load_task, mmlu, wikitext
from gptjax.eval.tasks.base import PARQUET_REVISION, ChoiceItem

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
FOUNDRY = FIXTURES / "llm_foundry_evals"


def mmlu_rows(subject: str, split: str) -> list[dict]:
    with open(FIXTURES / f"mmlu/{split}/{subject}_{split}.csv", newline="", encoding="utf-8") as f:
        return [mmlu_original(row) for row in csv.reader(f)]


def hub_datasets() -> dict[str, dict[tuple[str, str], list[dict]]]:
    """repo id -> (config, split) -> rows, as the Hub's parquet conversion of lm-eval's datasets holds them."""
    foundry = {name: jsonl(FOUNDRY / f"{name}.jsonl") for name in ("arc_easy", "arc_challenge", "piqa", "winogrande")}
    subjects = sorted(mmlu.bundled_categories())
    filler = MMLU_SUBJECTS[0]  # subjects without a fixture get its rows (only the four real ones are compared)
    return {
        "Rowan/hellaswag": {("default", "validation"): [
            hellaswag_original(r) for r in jsonl(FIXTURES / "hellaswag/hellaswag_val.jsonl")]},
        "allenai/ai2_arc": {(config, "test"): [arc_original(i, r) for i, r in enumerate(foundry[name])]
                            for config, name in (("ARC-Easy", "arc_easy"), ("ARC-Challenge", "arc_challenge"))},
        "baber/piqa": {("default", "validation"): [piqa_original(r) for r in foundry["piqa"]]},
        "allenai/winogrande": {("winogrande_xl", "validation"): [
            winogrande_original(r) for r in foundry["winogrande"]]},
        "EleutherAI/lambada_openai": {("default", "test"): [
            {"text": r["context"] + " " + r["continuation"]}
            for r in jsonl(FIXTURES / "lambada/lambada_openai.jsonl")]},
        "EleutherAI/wikitext_document_level": {("wikitext-2-raw-v1", "test"): [
            {"page": page}
            for page in wikitext.documents((FIXTURES / "wikitext2/test.txt").read_text(encoding="utf-8"))]},
        "cais/mmlu": {(subject, split): mmlu_rows(subject if subject in MMLU_SUBJECTS else filler, split)
                      for subject in subjects for split in ("test", "dev")},
    }


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_hub")
    cache = root / "cache"
    for number, (repo_id, splits) in enumerate(hub_datasets().items()):
        files = root / "files" / repo_id.replace("/", "--")
        for (config, split), rows in splits.items():
            (files / config / split).mkdir(parents=True)
            pq.write_table(pa.Table.from_pylist(rows), files / config / split / "0000.parquet")
        cached_repo(cache, repo_id, files, commit=f"{number:040d}", branch=PARQUET_REVISION, repo_type="dataset")
    return cache


def offline(monkeypatch, cache: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


@pytest.mark.parametrize("task, shots", [(task, 0) for task in sorted(TASKS)] + [("mmlu", 5)])
def test_hub_items_equal_the_local_items(hub_cache, monkeypatch, task, shots):
    offline(monkeypatch, hub_cache)
    from_hub, local = load_task(task, None, shots), load_task(task, FIXTURES, shots)
    hub_items = from_hub.items
    if task == "mmlu":
        hub_items = tuple(item for item in hub_items if item.group in MMLU_SUBJECTS)
        assert {item.group for item in from_hub.items} == set(mmlu.bundled_categories()), "all 57 subjects"
        assert {subject: from_hub.group_categories[subject] for subject in MMLU_SUBJECTS} == local.group_categories
    assert hub_items == local.items
    assert (from_hub.kind, from_hub.metrics, from_hub.shots) == (local.kind, local.metrics, local.shots)
    assert all(PARQUET_REVISION not in path and ".parquet" in path for path in from_hub.files)


def test_hellaswag_query_capitalizes_ctx_b_as_lm_eval_does():
    from lm_eval.tasks.hellaswag.utils import process_docs

    from gptjax.eval.tasks import hellaswag

    datasets = pytest.importorskip("datasets")
    rows = [{"activity_label": "Removing ice", "ctx_a": "A man scrapes a car. Then", "ctx_b": "he Sprays it. [title]",
             "endings": ["a [step] b", "c", "d", "e"], "label": "2"}]
    reference = process_docs(datasets.Dataset.from_list(rows))[0]
    item = hellaswag.build_hub_item(0, rows[0])
    assert isinstance(item, ChoiceItem)
    assert (item.contexts[0], list(item.choice_texts), item.gold) == (reference["query"], reference["choices"],
                                                                      reference["gold"])


def test_cli_eval_reads_tasks_from_the_hub_cache(hub_cache, gpt2_bpe_model, tmp_path):
    out = tmp_path / "results.json"
    result = run_cli(["eval", "--workdir", str(gpt2_bpe_model["gptjax"]), "--tasks", "arc_easy,winogrande",
                      "--limit", "3", "--out", str(out)],
                     env_extra={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "GPTJAX_EVAL_DATA": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(out.read_text())
    assert document["results"]["arc_easy"]["n"] == 3
    assert any("allenai--ai2_arc" in path for path in json.dumps(document["data"]).split('"'))
