"""GPT-2 large (774M): GPT-2 small's recipe at 36 layers, 20 heads, 1280 wide, lr 2.5e-4.

gptjax train --config experiments/gpt2_774m.py --workdir runs/gpt2_774m --config.data.path=data/corpus-gpt2
Target: a v5e-16 slice (TOPOLOGY), the same 480 x 1024 tokens a step in 15 microbatches:
  gptjax compile-check --config experiments/gpt2_774m.py --topology v5e-16
"""
from pathlib import Path

from gptjax.config import load_experiment

TOPOLOGY = "v5e-16"


def get_config():
    c = load_experiment(Path(__file__).with_name("gpt2_124m.py"))
    c.name = "gpt2_774m"
    c.model.n_layer = 36
    c.model.n_head = 20
    c.model.d_model = 1280
    c.train.steps = 400_000
    c.train.lr = 2.5e-4
    c.train.min_lr = 2.5e-5
    c.train.grad_accum = 15
    return c
