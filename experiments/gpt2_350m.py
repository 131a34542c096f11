"""GPT-2 medium (350M): 24 layers, 16 heads, 1024 wide, 1024 context, GPT-2 BPE vocabulary.

gptjax train --config experiments/gpt2_350m.py --workdir runs/gpt2_350m --config.data.path=data/corpus-gpt2
"""
from gptjax.config import base_config


def get_config():
    c = base_config()
    c.name = "gpt2_350m"
    c.data.dataset = ""
    c.data.tokenizer = "gpt2_bpe"
    c.model.block_size = 1024
    c.model.n_layer = 24
    c.model.n_head = 16
    c.model.d_model = 1024
    c.model.dropout = 0.0
    c.model.use_bias = True
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "save_dots"
    c.model.attention_impl = "auto"
    c.train.batch_size = 480
    c.train.steps = 400_000
    c.train.lr = 3e-4
    c.train.min_lr = 3e-5
    c.train.warmup_steps = 2000
    c.train.beta2 = 0.95
    c.train.weight_decay = 0.1
    c.train.eval_every = 1000
    c.train.eval_batches = 100
    c.train.checkpoint_every = 2000
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
