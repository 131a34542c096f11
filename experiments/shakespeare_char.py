"""nanoGPT's GPU Shakespeare model: 6 layers, 6 heads, 384 wide, block 256, dropout 0.2, 5000 iters.

gptjax train --config experiments/shakespeare_char.py --workdir runs/shakespeare_char
"""
from gptjax.config import base_config


def get_config():
    c = base_config()
    c.name = "shakespeare_char"
    c.data.dataset = "shakespeare_char"
    c.model.block_size = 256
    c.model.n_layer = 6
    c.model.n_head = 6
    c.model.d_model = 384
    c.model.dropout = 0.2
    c.model.use_bias = False
    c.train.batch_size = 64
    c.train.steps = 5000
    c.train.lr = 1e-3
    c.train.min_lr = 1e-4
    c.train.warmup_steps = 100
    c.train.decay_steps = 5000
    c.train.beta2 = 0.99
    c.train.weight_decay = 0.1
    c.train.grad_clip = 1.0
    c.train.eval_every = 250
    c.train.eval_batches = 50
    c.train.checkpoint_every = 1000
    return c
