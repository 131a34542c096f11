"""nanoGPT's CPU Shakespeare settings: 4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iters.

gptjax train --config experiments/shakespeare_char_cpu.py --workdir runs/shakespeare_char_cpu
"""
from gptjax.config import base_config


def get_config():
    c = base_config()
    c.name = "shakespeare_char_cpu"
    c.data.dataset = "shakespeare_char"
    c.model.block_size = 64
    c.model.n_layer = 4
    c.model.n_head = 4
    c.model.d_model = 128
    c.model.dropout = 0.0
    c.model.use_bias = False
    c.model.gelu_approximate = False  # nanoGPT's nn.GELU() is the exact erf GELU
    c.train.batch_size = 12
    c.train.steps = 2000
    c.train.lr = 1e-3
    c.train.min_lr = 1e-4
    c.train.warmup_steps = 100
    c.train.decay_steps = 2000
    c.train.beta2 = 0.99
    c.train.weight_decay = 0.1
    c.train.grad_clip = 1.0
    c.train.eval_every = 250
    c.train.eval_batches = 20
    c.train.checkpoint_every = 500
    return c
