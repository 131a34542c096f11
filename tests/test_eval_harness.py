"""The lm-eval adapter: `gptjax` as an lm_eval model, in-process and from lm-eval's command line, scoring a local
task exactly as lm-eval's HF backend scores the HF export of the same weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

DOCS = [{"query": "The capital of France is", "choices": [" Paris", " Rome", " a river"], "gold": 0},
        {"query": "Two plus two equals", "choices": [" four", " five"], "gold": 0},
        {"query": "", "choices": ["Yes", "No"], "gold": 1},
        {"query": "The sky is  ", "choices": ["blue.", "green, and the grass is very tall"], "gold": 0}]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Local multiple-choice, rolling-perplexity and generation tasks over the same JSONL file."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (root / "gptjax_mc.yaml").write_text(
        "task: gptjax_mc\n" + common + "output_type: multiple_choice\ndoc_to_text: '{{query}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{gold}}'\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\nmetadata:\n  version: 1.0\n")
    (root / "gptjax_ppl.yaml").write_text(
        "task: gptjax_ppl\n" + common + "output_type: loglikelihood_rolling\n"
        "doc_to_text: ''\ndoc_to_target: '{{query}} {{choices|join(\" \")}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\nmetadata:\n  version: 1.0\n")
    (root / "gptjax_gen.yaml").write_text(
        "task: gptjax_gen\n" + common + "output_type: generate_until\ndoc_to_text: 'Q: {{query}}'\n"
        "doc_to_target: '{{choices[gold]}}'\ngeneration_kwargs:\n  until: ['e', ' a']\n  max_gen_toks: 12\n"
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\nmetadata:\n  version: 1.0\n")
    return root


def _evaluate(model: str, model_args: str, task_dir) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    import gptjax.interop.lm_eval  # noqa: F401  (registers "gptjax")

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["gptjax_mc", "gptjax_ppl", "gptjax_gen"],
                                   task_manager=TaskManager(include_path=str(task_dir)), batch_size=4,
                                   device="cpu", log_samples=True)


def _sample_scores(out: dict, task: str) -> list[float]:
    """Every logged response's score, document by document (multiple choice: one per choice)."""
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return [r[0] if isinstance(r, (list, tuple)) else r for s in samples for r in s["filtered_resps"]]


def test_simple_evaluate_gptjax_equals_hf_backend(gpt2_bpe_model, task_dir):
    ours = _evaluate("gptjax", f"path={gpt2_bpe_model['gptjax']}", task_dir)
    theirs = _evaluate("hf", f"pretrained={gpt2_bpe_model['hf']},dtype=float32", task_dir)
    for task in ("gptjax_mc", "gptjax_ppl"):
        assert _sample_scores(ours, task) == pytest.approx(_sample_scores(theirs, task), abs=1e-4)
    assert _sample_scores(ours, "gptjax_gen") == _sample_scores(theirs, "gptjax_gen")  # greedy text, stop-cut
    assert ours["results"]["gptjax_mc"]["acc,none"] == theirs["results"]["gptjax_mc"]["acc,none"]
    assert ours["results"]["gptjax_ppl"]["word_perplexity,none"] == pytest.approx(
        theirs["results"]["gptjax_ppl"]["word_perplexity,none"], rel=1e-5)
    assert ours["config"]["model_path"] == str(gpt2_bpe_model["gptjax"])


def test_lm_eval_command_line_runs_gptjax(gpt2_bpe_model, task_dir, tmp_path):
    """lm-eval's own CLI (run through gptjax.interop.lm_eval, which registers the model first)."""
    out_dir = tmp_path / "out"
    cmd = [sys.executable, "-m", "gptjax.interop.lm_eval", "run", "--model", "gptjax",
           "--model_args", f"path={gpt2_bpe_model['gptjax']}", "--tasks", "gptjax_mc",
           "--include_path", str(task_dir), "--batch_size", "8", "--output_path", str(out_dir)]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in out_dir.rglob("results_*.json")]
    assert len(results) == 1 and 0.0 <= results[0]["results"]["gptjax_mc"]["acc,none"] <= 1.0


def test_batch_size_arguments():
    from gptjax.errors import GptjaxError
    from gptjax.interop.lm_eval import parse_batch_size

    assert parse_batch_size("16") == 16 and parse_batch_size("auto") == 32 and parse_batch_size("auto:4", 8) == 8
    with pytest.raises(GptjaxError, match="not an integer"):
        parse_batch_size("many")
