"""MFU: the analytic training FLOPs per token, the trainer's live tokens/s and MFU, and benchmarks/train_gpu.py
(run here in its CPU smoke mode: the GPU figure needs a GPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, tiny_config

from gptjax import config as config_lib
from gptjax.model.transformer import flops_per_token


def gpt2_124m_model() -> config_lib.ModelConfig:
    cd = config_lib.apply_overrides(config_lib.load_experiment(REPO / "experiments" / "gpt2_124m.py"),
                                    ["model.vocab_size=50257"])
    return config_lib.to_config(cd).model


def test_gpt2_124m_costs_6_flops_per_matmul_weight_and_12_l_d_t_for_attention_per_token():
    # by hand: per layer q, k, v, out 4·768² + MLP 2·768·3072; the tied head 768·50304 (the padded vocabulary);
    # attention scores and values 12·L·d·T with the full 1024 context (nanoGPT's and PaLM's convention)
    matmul_weights = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 768 * 50304
    assert matmul_weights == 123_568_128
    assert flops_per_token(gpt2_124m_model(), 1024) == 6 * matmul_weights + 12 * 12 * 768 * 1024 == 854_654_976


def test_the_trainer_logs_tokens_per_second_and_mfu_of_the_analytic_flops(tmp_path, cache_dir, shakespeare_dir):
    import jax

    from gptjax.train.loop import train

    peak = 2e11
    cfg = tiny_config(cache_dir, train={"steps": 6, "peak_flops": peak})
    train(cfg, tmp_path / "run", show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "mfu" in r]
    assert len(timed) >= 4, "every step after the first has a wall time"
    saved = config_lib.from_dict(json.loads((tmp_path / "run" / "config.json").read_text()))
    per_token = flops_per_token(saved.model, saved.model.block_size)
    for row in timed:
        assert row["tokens_per_s"] > 0
        assert row["mfu"] == pytest.approx(per_token * row["tokens_per_s"] / (peak * jax.device_count()), rel=1e-9)


def test_the_gpu_training_benchmark_runs_its_smoke_mode_on_cpu():
    proc = subprocess.run([sys.executable, "benchmarks/train_gpu.py", "--smoke"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["seq_len"] == 64 and result["batch_size"] == 4 and result["dtype"] == "bfloat16"
    assert result["tokens_per_s"] == pytest.approx(4 * 64 / result["median_step_s"])
    assert result["mfu"] == pytest.approx(result["flops_per_token"] * result["tokens_per_s"] / result["peak_flops"])
    assert 0 < result["mfu"] < 1 and "| **" in proc.stdout, "the markdown row with the MFU"
