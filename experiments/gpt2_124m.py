"""GPT-2 small (124M): 12 layers, 12 heads, 768 wide, 1024 context, GPT-2 BPE vocabulary (50257 -> 50304 padded).

Data: a corpus prepared with the GPT-2 tokenizer, e.g.
  gptjax prepare --input corpus/ --out data/corpus-gpt2 --tokenizer gpt2_bpe --tokenizer-dir tests/fixtures/gpt2
  gptjax train --config experiments/gpt2_124m.py --workdir runs/gpt2_124m --config.data.path=data/corpus-gpt2
Settings follow nanoGPT's train_gpt2 config (0.5M tokens/step via accumulation, lr 6e-4, 600k steps).
Target: a v5e-4 slice (TOPOLOGY), 480 x 1024 tokens a step in 12 microbatches of 40:
  gptjax compile-check --config experiments/gpt2_124m.py --topology v5e-4
(9.65 GiB of 16 per chip; 1.33 s a step at 40% MFU; python benchmarks/experiments_fit.py checks every target).
"""
from gptjax.config import base_config

TOPOLOGY = "v5e-4"


def get_config():
    c = base_config()
    c.name = "gpt2_124m"
    c.data.dataset = ""
    c.data.tokenizer = "gpt2_bpe"
    c.model.block_size = 1024
    c.model.n_layer = 12
    c.model.n_head = 12
    c.model.d_model = 768
    c.model.dropout = 0.0
    c.model.use_bias = True
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "save_dots"
    c.model.attention_impl = "auto"
    c.train.batch_size = 480
    c.train.grad_accum = 12
    c.train.steps = 600_000
    c.train.lr = 6e-4
    c.train.min_lr = 6e-5
    c.train.warmup_steps = 2000
    c.train.beta2 = 0.95
    c.train.weight_decay = 0.1
    c.train.eval_every = 1000
    c.train.eval_batches = 100
    c.train.checkpoint_every = 2000
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
