"""The small model the shipped ablations vary: experiments/shakespeare_char_cpu.py shrunk to 3 layers x 96 wide
(4 heads, block 64), batch 16, 600 steps whose cosine schedule spans each run's own steps (about 15 s a run on 2
CPU cores). An experiment file itself, so it also trains alone:

gptjax train --config experiments/ablations/base.py --workdir runs/ablation_base
"""
from pathlib import Path

from gptjax.config import load_experiment


def get_config():
    c = load_experiment(Path(__file__).parents[1] / "shakespeare_char_cpu.py")
    c.name = "ablation_base"
    c.model.n_layer = 3
    c.model.d_model = 96
    c.train.batch_size = 16
    c.train.steps = 600
    c.train.lr = 2e-3
    c.train.min_lr = 2e-4
    c.train.warmup_steps = 50
    c.train.decay_steps = 0
    c.train.eval_every = 100
    c.train.eval_batches = 10
    c.train.checkpoint_every = 1000
    c.train.tensorboard = False
    return c
