"""Benchmark tasks (gptjax/eval/tasks) and the suite (gptjax/eval/suite.py): prompts as lm-eval builds them, metric
and stderr definitions against lm-eval's own functions, bad input, and `gptjax eval --tasks` end to end.

A scripted test double stands in for the LM (its log-likelihood is a pure function of the request strings), so
these tests need no model except the CLI one; the item-level comparison with lm-eval on a real model and the
chance-level check are in tests/test_eval_vs_lm_eval.py.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from gptjax.cli import main as cli_main
from gptjax.errors import GptjaxError
from gptjax.eval import suite
from gptjax.eval.requests import LoglikelihoodResults
from gptjax.eval.tasks import TASKS, hellaswag, load_task, parse_task_names, wikitext

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"


class ScriptedLM:
    """A stand-in LM: loglikelihood = -len(continuation) (so acc picks the shortest choice and acc_norm the longest),
    greedy when the continuation is one character after the space, truncation reported for contexts longer than
    `truncate_over` characters; rolling = -len(text). Records every call."""

    def __init__(self, truncate_over: int = 10**9):
        from gptjax.config import ModelConfig

        self.truncate_over = truncate_over
        self.calls: list[list] = []
        self.step, self.params, self.config = 7, {"w": np.zeros((2, 3))}, ModelConfig(vocab_size=50)

    def loglikelihood(self, requests, batch_size=32, progress=False):
        self.calls.append(list(requests))
        return LoglikelihoodResults([(-float(len(x)), len(x) == 2) for _, x in requests],
                                    n_truncated=sum(len(c) > self.truncate_over for c, _ in requests))

    def loglikelihood_rolling(self, texts, batch_size=32, progress=False):
        return [-float(len(t)) for t in texts]


# ---- prompts ------------------------------------------------------------------------------------------------------

def test_multiple_choice_prompts_are_lm_eval_s():
    item = load_task("hellaswag", FIXTURES).items[0]
    assert item.contexts == ("Roof shingle removal: A man is sitting on a roof. He",) * 4  # ctx_b capitalised
    assert item.continuations[0] == " is using wrap to wrap a pair of skis." and item.gold == 3
    wikihow = load_task("hellaswag", FIXTURES).items[50]
    assert wikihow.index == 50 and wikihow.contexts[0].endswith("foundational concepts in fashion.")
    arc = load_task("arc_easy", FIXTURES).items[0]
    assert arc.contexts[0] == ("Question: Which statement best explains why photosynthesis is the foundation of most "
                               "food webs?\nAnswer:")
    assert arc.continuations[0] == " Sunlight is the source of energy for nearly all ecosystems."
    assert arc.choice_texts[0] == arc.continuations[0][1:]
    piqa = load_task("piqa", FIXTURES).items[0]
    assert piqa.contexts == ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",) * 2
    wino = load_task("winogrande", FIXTURES).items[0]
    assert wino.contexts == ("Sarah was a much better surgeon than Maria so Sarah",
                             "Sarah was a much better surgeon than Maria so Maria")
    assert wino.continuations == (" always got the easier cases.",) * 2 and wino.gold == 1
    lambada = load_task("lambada", FIXTURES).items[0]
    assert lambada.context.endswith("I don't care about") and lambada.continuation == " signs"


def test_mmlu_prompts_zero_and_few_shot():
    zero = [i for i in load_task("mmlu", FIXTURES).items if i.group == "world_religions"][0]
    question = "What can murtis be translated as?\nA. Offerings\nB. Prayers\nC. Apparitions\nD. Idols\nAnswer:"
    header = "The following are multiple choice questions (with answers) about world religions.\n\n"
    assert zero.contexts == (header + question,) * 4
    assert zero.continuations == (" A", " B", " C", " D") and zero.gold == 3 and zero.choice_texts == tuple("ABCD")
    two = [i for i in load_task("mmlu", FIXTURES, shots=2).items if i.group == "world_religions"][0]
    shots = ("What is the sign of the covenant for Jewish males?\nA. The rainbow\nB. Circumcision\nC. A son\n"
             "D. Bar mitzvah\nAnswer: B\n\nWhat is the Second Gem in Buddhism?\nA. The Dharma\nB. The Sangha\n"
             "C. The Buddha\nD. The Bodhisattva\nAnswer: A\n\n")
    assert two.contexts[0] == header + shots + question
    task = load_task("mmlu", FIXTURES, limit=3)
    assert len(task.items) == 12 and task.group_categories == {
        "conceptual_physics": "stem", "human_sexuality": "social_sciences", "management": "other",
        "world_religions": "humanities"}


def test_hellaswag_preprocess_equals_lm_eval_s():
    from lm_eval.tasks.hellaswag.utils import preprocess as lm_eval_preprocess

    for text in (" [header] How to cook [title] Boil water.  Then [step] stir. ", "plain text", "a [x] b [title]"):
        assert hellaswag.preprocess(text) == lm_eval_preprocess(text)
    assert hellaswag.capitalized_last_fragment("Label: A man waits. the man") == "Label: A man waits. The man"
    assert hellaswag.capitalized_last_fragment("Label: Whole sentence.") == "Label: Whole sentence."


def test_wikitext_documents_and_detokenizer():
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

    text = " \n = One = \n a b \n = = Sub = = \n c \n = Two = \n d \n"
    assert wikitext.documents(text) == [" = One = \n a b \n = = Sub = = \n c ", " = Two = \n d \n"]
    task = load_task("wikitext2", FIXTURES)
    pages = wikitext.documents((FIXTURES / "wikitext2/test.txt").read_text(encoding="utf-8"))
    assert len(task.items) == len(pages) == 4
    for item, page in zip(task.items, pages):
        assert item.text == wikitext_detokenizer({"page": page}) != page
        counts = process_results({"page": page}, [-1.0])
        assert (item.n_words, item.n_bytes) == (counts["word_perplexity"][1], counts["bits_per_byte"][1])


# ---- metrics ------------------------------------------------------------------------------------------------------

def test_choice_metrics_match_lm_eval_definitions():
    from lm_eval.api.metrics import mean_stderr

    task = load_task("arc_easy", FIXTURES)
    run = suite.run_task(ScriptedLM(), task, progress=False)
    shortest = [int(np.argmin([len(c) for c in item.choice_texts])) for item in task.items]
    longest = [int(np.argmax([len(c) for c in item.choice_texts])) for item in task.items]
    acc = [float(p == item.gold) for p, item in zip(shortest, task.items)]
    acc_norm = [float(p == item.gold) for p, item in zip(longest, task.items)]
    assert [s["pred"] for s in run.samples] == shortest and [s["pred_norm"] for s in run.samples] == longest
    assert run.metrics["acc"] == pytest.approx(np.mean(acc), abs=1e-12)
    assert run.metrics["acc_stderr"] == pytest.approx(mean_stderr(acc), abs=1e-12)
    assert run.metrics["acc_norm"] == pytest.approx(np.mean(acc_norm), abs=1e-12)
    assert run.metrics["acc_norm_stderr"] == pytest.approx(mean_stderr(acc_norm), abs=1e-12)
    assert run.metrics["n"] == 100 and run.metrics["chance"] == 0.25 and run.metrics["skipped"] == 0


def test_mmlu_group_aggregation_matches_lm_eval():
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

    run = suite.run_task(ScriptedLM(), load_task("mmlu", FIXTURES), progress=False)
    subjects = run.metrics["subjects"]
    assert set(subjects) == {"conceptual_physics", "human_sexuality", "management", "world_religions"}
    # one subject per category here, so each category equals its subject
    for subject, category in load_task("mmlu", FIXTURES).group_categories.items():
        assert run.metrics["categories"][category]["acc"] == pytest.approx(subjects[subject]["acc"])
    categories = list(run.metrics["categories"].values())
    sizes = [c["n"] for c in categories]
    assert run.metrics["acc"] == pytest.approx(aggregate_subtask_metrics([c["acc"] for c in categories], sizes))
    assert run.metrics["acc"] == pytest.approx(np.mean([s["acc"] for s in run.samples]))  # = micro average
    assert run.metrics["acc_stderr"] == pytest.approx(pooled_sample_stderr([c["acc_stderr"] for c in categories],
                                                                           sizes))
    assert suite.pooled_stderr([0.1, 0.2], [10, 30]) == pytest.approx(pooled_sample_stderr([0.1, 0.2], [10, 30]))


def test_perplexity_metrics_match_lm_eval_aggregations(monkeypatch):
    from lm_eval.api import metrics as lm_metrics

    lls = np.random.default_rng(0).normal(-3.0, 1.0, 200)
    mine = suite.perplexity_metrics(lls, iters=4000)
    assert mine["perplexity"] == pytest.approx(lm_metrics.perplexity(list(lls)), rel=1e-12)
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")
    theirs = lm_metrics.bootstrap_stderr(lm_metrics.perplexity, list(lls), iters=4000)
    assert mine["perplexity_stderr"] == pytest.approx(theirs, rel=0.1)  # both bootstraps: equal in distribution
    words, n_bytes = np.array([120.0, 40.0, 300.0]), np.array([700.0, 230.0, 1700.0])
    doc_lls = np.array([-400.0, -150.0, -900.0])
    rolling = suite.rolling_metrics(doc_lls, words, n_bytes, iters=100)
    assert rolling["word_perplexity"] == pytest.approx(lm_metrics.weighted_perplexity(list(zip(doc_lls, words))))
    assert rolling["byte_perplexity"] == pytest.approx(lm_metrics.weighted_perplexity(list(zip(doc_lls, n_bytes))))
    assert rolling["bits_per_byte"] == pytest.approx(lm_metrics.bits_per_byte(list(zip(doc_lls, n_bytes))))
    assert all(rolling[f"{m}_stderr"] > 0 for m in ("word_perplexity", "byte_perplexity", "bits_per_byte"))
    assert suite.mean_stderr([1.0]) is None


def test_lambada_and_wikitext_runs():
    lm = ScriptedLM()
    run = suite.run_task(lm, load_task("lambada", FIXTURES, limit=10), bootstrap_iters=200, progress=False)
    conts = [item.continuation for item in load_task("lambada", FIXTURES, limit=10).items]
    assert run.metrics["acc"] == pytest.approx(np.mean([len(c) == 2 for c in conts]))
    assert run.metrics["perplexity"] == pytest.approx(math.exp(np.mean([len(c) for c in conts])))
    wiki = suite.run_task(lm, load_task("wikitext2", FIXTURES), bootstrap_iters=200, progress=False)
    items = load_task("wikitext2", FIXTURES).items
    total = sum(len(i.text) for i in items)
    assert wiki.metrics["bits_per_byte"] == pytest.approx(total / sum(i.n_bytes for i in items) / math.log(2))
    assert wiki.metrics["word_perplexity"] == pytest.approx(math.exp(total / sum(i.n_words for i in items)))


# ---- bad input ----------------------------------------------------------------------------------------------------

def write_bad_data(root: Path) -> Path:
    """A data dir whose hellaswag and mmlu files hold good rows and each kind of malformed row."""
    good = json.loads((FIXTURES / "hellaswag/hellaswag_val.jsonl").read_text().splitlines()[0])
    rows = [json.dumps(good), json.dumps({**good, "endings": good["endings"][:3]}), json.dumps({**good, "label": 7}),
            json.dumps({k: v for k, v in good.items() if k != "label"}), "{not json",
            json.dumps({**good, "label": "2"}),
            json.dumps(good)]
    (root / "hellaswag").mkdir(parents=True)
    (root / "hellaswag/hellaswag_val.jsonl").write_text("\n".join(rows) + "\n")
    shutil.copytree(FIXTURES / "mmlu", root / "mmlu")
    path = root / "mmlu/test/management_test.csv"
    path.write_text(path.read_text() + "Too few columns?,a,b,c,A\nBad answer?,a,b,c,d,E\n")
    return root


def test_malformed_rows_are_skipped_and_counted(tmp_path):
    data = write_bad_data(tmp_path / "data")
    lm = ScriptedLM(truncate_over=200)
    tasks = suite.load_tasks(["hellaswag", "mmlu"], data, shots=1)
    document = suite.evaluate(lm, "model-dir", tasks, out=tmp_path / "results.json",
                              log_samples=tmp_path / "samples.jsonl", progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"] == json.loads(json.dumps(document["results"]))
    hs, mmlu = saved["results"]["hellaswag"], saved["results"]["mmlu"]
    assert hs["n"] == 2 and hs["skipped"] == 5
    assert "row 1: has 3 endings, needs 4" in hs["skipped_examples"]
    assert any("out of range" in e for e in hs["skipped_examples"])
    assert mmlu["n"] == 100 and mmlu["skipped"] == 2 and mmlu["shots"] == 1
    # contexts over 200 characters are what the stand-in reports as truncated
    assert mmlu["truncated"] == sum(len(c) > 200 for item in tasks[1].items for c in item.contexts)
    assert mmlu["truncated"] > 0
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 102 and samples[0]["task"] == "hellaswag" and len(samples[0]["loglikelihoods"]) == 4
    assert {"index", "is_greedy", "gold", "pred", "pred_norm", "acc", "acc_norm"} <= set(samples[0])
    assert saved["data"]["hellaswag"]["sha256"] == suite.data_digest(tasks[0].files)["sha256"]
    assert saved["model"] == {"workdir": "model-dir", "step": 7, "params": 6, "config": saved["model"]["config"]}
    assert saved["model"]["config"]["vocab_size"] == 50


def test_unknown_task_lists_known_ones():
    with pytest.raises(GptjaxError, match="unknown task nope.*known tasks: hellaswag, mmlu, lambada, arc_easy"):
        parse_task_names("arc_easy,nope")
    assert parse_task_names(" piqa,piqa,winogrande ") == ["piqa", "winogrande"]
    assert set(TASKS) == {"hellaswag", "mmlu", "lambada", "arc_easy", "arc_challenge", "piqa", "winogrande",
                          "wikitext2"}


@pytest.mark.parametrize("args, env, message", [
    (["--tasks", "piqa,bogus"], {}, "unknown task bogus"),
    (["--tasks", "piqa"], {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "{empty}"},
     "task piqa: dataset baber/piqa@refs/convert/parquet: HF_HUB_OFFLINE=1 and it is not in the Hub cache {empty}; "
     "download it once online (`hf download baber/piqa --repo-type dataset`)"),
    (["--tasks", "piqa", "--data-dir", "{empty}"], {}, "task piqa: data file {empty}/llm_foundry_evals/piqa.jsonl not "
                                                       "found; point --data-dir"),
    (["--tasks", "mmlu", "--shots", "6"], {"GPTJAX_EVAL_DATA": str(FIXTURES)}, "--shots 6 is more than the 5 dev "
                                                                               "examples of conceptual_physics"),
    (["--tasks", "piqa", "--limit", "0", "--data-dir", str(FIXTURES)], {}, "--limit must be at least 1"),
    (["--batch-size", "0"], {}, "--batch-size must be at least 1"),
    (["--limit", "3", "--shots", "1"], {}, "--limit, --shots do not apply without --tasks"),
    (["--tasks", "piqa", "--split", "val", "--data-dir", str(FIXTURES)], {}, "--split does not apply with --tasks"),
])
def test_cli_bad_task_input_is_one_line_exit_2(args, env, message, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GPTJAX_EVAL_DATA", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value.replace("{empty}", str(empty)))
    args = [a.replace("{empty}", str(empty)) for a in args]
    assert cli_main(["eval", "--workdir", str(tmp_path / "no-model"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("gptjax: error: ")
    assert message.replace("{empty}", str(empty)) in err


def test_cli_tasks_end_to_end(gpt2_bpe_model, tmp_path):
    out, samples = tmp_path / "results.json", tmp_path / "samples.jsonl"
    result = run_cli(["eval", "--workdir", str(gpt2_bpe_model["gptjax"]), "--tasks", "arc_easy,lambada,mmlu,wikitext2",
                      "--limit", "3", "--shots", "1", "--out", str(out), "--log-samples", str(samples)],
                     env_extra={"GPTJAX_EVAL_DATA": str(FIXTURES)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| task | shots | metric | value | ± stderr | n |" in result.stdout
    assert "| mmlu | 1 | acc |" in result.stdout and "|   mmlu_stem | 1 | acc |" in result.stdout
    assert "item/s" in result.stderr and "arc_easy, lambada, wikitext2 ran 0-shot" in result.stderr
    document = json.loads(out.read_text())
    assert set(document) == {"results", "model", "data"}
    assert document["model"]["params"] > 0 and document["model"]["config"]["vocab_size"] == 50257
    arc = document["results"]["arc_easy"]
    assert arc["n"] == 3 and {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "truncated", "skipped"} <= set(arc)
    assert document["results"]["mmlu"]["n"] == 12 and document["results"]["wikitext2"]["n"] == 3
    import hashlib

    arc_file = FIXTURES / "llm_foundry_evals/arc_easy.jsonl"
    assert document["data"]["arc_easy"]["sha256"] == hashlib.sha256(arc_file.read_bytes()).hexdigest()
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [line["task"] for line in lines] == ["arc_easy"] * 3 + ["lambada"] * 3 + ["mmlu"] * 12 + ["wikitext2"] * 3
    assert all(line["loglikelihood"] < 0 for line in lines if line["task"] == "lambada")


def test_items_whose_continuation_exceeds_the_window_are_skipped_and_counted():
    import flax.linen as nn
    from conftest import GPT2_FIXTURES

    from gptjax.api import LM
    from gptjax.config import Config, ModelConfig
    from gptjax.data.tokenizer import Gpt2BpeAdapter
    from gptjax.eval.suite import run_task
    from gptjax.eval.tasks import load_task
    from gptjax.model.transformer import Transformer, init_params

    cfg = Config(model=ModelConfig(vocab_size=50257, block_size=12, n_layer=1, n_head=2, d_model=16))
    lm = LM(cfg, nn.unbox(init_params(Transformer(cfg.model), 0, 8)), Gpt2BpeAdapter.from_dir(GPT2_FIXTURES))
    task = load_task("hellaswag", Path(__file__).parent / "fixtures" / "eval", 0, 40)
    metrics = run_task(lm, task, batch_size=8, bootstrap_iters=10, progress=False).metrics
    assert metrics["too_long"] > 0 and metrics["n"] == 40 - metrics["too_long"] > 0
    assert metrics["truncated"] > 0  # the kept items' contexts were cut from the left
