"""nanoGPT's GPU Shakespeare model: the CPU recipe at 6 layers, 6 heads, 384 wide, block 256, batch 64,
dropout 0.2, 5000 iters.

gptjax train --config experiments/shakespeare_char.py --workdir runs/shakespeare_char
"""
from pathlib import Path

from gptjax.config import load_experiment


def get_config():
    c = load_experiment(Path(__file__).with_name("shakespeare_char_cpu.py"))
    c.name = "shakespeare_char"
    c.model.block_size = 256
    c.model.n_layer = 6
    c.model.n_head = 6
    c.model.d_model = 384
    c.model.dropout = 0.2
    c.train.batch_size = 64
    c.train.steps = 5000
    c.train.decay_steps = 5000
    c.train.eval_batches = 50
    c.train.checkpoint_every = 1000
    return c
