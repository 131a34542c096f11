"""GPT-2 medium (350M): GPT-2 small's recipe at 24 layers, 16 heads, 1024 wide, lr 3e-4.

gptjax train --config experiments/gpt2_350m.py --workdir runs/gpt2_350m --config.data.path=data/corpus-gpt2
Target: a v5e-8 slice (TOPOLOGY), the same 480 x 1024 tokens a step in 15 microbatches:
  gptjax compile-check --config experiments/gpt2_350m.py --topology v5e-8
"""
from pathlib import Path

from gptjax.config import load_experiment

TOPOLOGY = "v5e-8"


def get_config():
    c = load_experiment(Path(__file__).with_name("gpt2_124m.py"))
    c.name = "gpt2_350m"
    c.model.n_layer = 24
    c.model.n_head = 16
    c.model.d_model = 1024
    c.train.steps = 400_000
    c.train.lr = 3e-4
    c.train.min_lr = 3e-5
    c.train.grad_accum = 15
    return c
