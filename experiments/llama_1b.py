"""A 1B Llama (TinyLlama-1.1B's shape): 22 layers, 2048 wide, 32 heads / 4 KV heads, SwiGLU 5632, 2048 context,
RMSNorm, RoPE, no biases, untied head, bf16, scanned layers; sentencepiece vocabulary 32000.

gptjax train --config experiments/llama_1b.py --workdir runs/llama_1b --config.data.path=data/corpus-sp32k
Target: a v5e-16 slice (TOPOLOGY), 256 x 2048 tokens a step in 16 microbatches:
  gptjax compile-check --config experiments/llama_1b.py --topology v5e-16
"""
from pathlib import Path

from gptjax.config import load_experiment

TOPOLOGY = "v5e-16"


def get_config():
    c = load_experiment(Path(__file__).with_name("llama_small.py"))
    c.name = "llama_1b"
    c.data.dataset = ""
    c.data.vocab_size = 32000
    c.model.block_size = 2048
    c.model.n_layer = 22
    c.model.n_head = 32
    c.model.n_kv_head = 4
    c.model.d_model = 2048
    c.model.d_ff = 5632
    c.model.dropout = 0.0
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "save_dots"
    c.model.attention_impl = "auto"
    c.train.batch_size = 256
    c.train.grad_accum = 16
    c.train.steps = 500_000
    c.train.lr = 4e-4
    c.train.min_lr = 4e-5
    c.train.warmup_steps = 2000
    c.train.weight_decay = 0.1
    c.train.eval_every = 1000
    c.train.eval_batches = 50
    c.train.checkpoint_every = 2000
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
