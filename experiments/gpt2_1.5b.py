"""GPT-2 XL (1.5B): GPT-2 small's recipe at 48 layers, 25 heads, 1600 wide, lr 2e-4.

gptjax train --config experiments/gpt2_1.5b.py --workdir runs/gpt2_1.5b --config.data.path=data/corpus-gpt2
Target: a v5e-32 slice (TOPOLOGY), the same 480 x 1024 tokens a step in 15 microbatches:
  gptjax compile-check --config experiments/gpt2_1.5b.py --topology v5e-32
"""
from pathlib import Path

from gptjax.config import load_experiment

TOPOLOGY = "v5e-32"


def get_config():
    c = load_experiment(Path(__file__).with_name("gpt2_124m.py"))
    c.name = "gpt2_1.5b"
    c.model.n_layer = 48
    c.model.n_head = 25
    c.model.d_model = 1600
    c.train.steps = 400_000
    c.train.lr = 2e-4
    c.train.min_lr = 2e-5
    c.train.grad_accum = 15
    return c
