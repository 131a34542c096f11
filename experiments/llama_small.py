"""A small Llama-style model: RMSNorm, RoPE (theta 10000), SwiGLU, grouped-query attention (8 heads, 2 KV heads),
no biases, untied head; sentencepiece BPE (vocab 4096) trained on the bundled Shakespeare on first use.

gptjax train --config experiments/llama_small.py --workdir runs/llama_small
"""
from gptjax.config import base_config


def get_config():
    c = base_config()
    c.name = "llama_small"
    c.data.dataset = "shakespeare"
    c.data.tokenizer = "sentencepiece"
    c.data.vocab_size = 4096
    c.model.block_size = 256
    c.model.n_layer = 6
    c.model.n_head = 8
    c.model.n_kv_head = 2
    c.model.d_model = 256
    c.model.norm = "rmsnorm"
    c.model.norm_eps = 1e-5
    c.model.position = "rope"
    c.model.rope_theta = 10000.0
    c.model.mlp = "swiglu"
    c.model.use_bias = False
    c.model.tie_embeddings = False
    c.model.dropout = 0.1
    c.train.batch_size = 32
    c.train.steps = 3000
    c.train.lr = 1e-3
    c.train.min_lr = 1e-4
    c.train.warmup_steps = 100
    c.train.beta2 = 0.95
    c.train.eval_every = 250
    c.train.checkpoint_every = 500
    return c
