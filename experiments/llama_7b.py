"""Llama-2-7B's shape: 32 layers, 4096 wide, 32 heads (MHA), SwiGLU 11008, 4096 context, RMSNorm, RoPE, vocab 32000;
the 1B recipe (llama_1b.py) otherwise, 1M tokens per step, lr 3e-4.

gptjax train --config experiments/llama_7b.py --workdir runs/llama_7b --config.data.path=data/corpus-sp32k
Target: a v5p-64 slice (TOPOLOGY), saving only attention outputs for the backward (remat save_attn_out):
  gptjax compile-check --config experiments/llama_7b.py --topology v5p-64
(32.97 GiB of 95 per chip; 8.23 s a step at 40% MFU; save_dots would need 99.3 GiB).
"""
from pathlib import Path

from gptjax.config import load_experiment

TOPOLOGY = "v5p-64"


def get_config():
    c = load_experiment(Path(__file__).with_name("llama_1b.py"))
    c.name = "llama_7b"
    c.model.block_size = 4096
    c.model.n_layer = 32
    c.model.n_head = 32
    c.model.n_kv_head = 0
    c.model.d_model = 4096
    c.model.d_ff = 11008
    c.model.norm_eps = 1e-5
    c.train.batch_size = 256
    c.train.lr = 3e-4
    c.train.min_lr = 3e-5
    c.model.remat = "save_attn_out"
    c.train.grad_accum = 1
    return c
