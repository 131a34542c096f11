"""A small English base model trainable on 2 CPU cores in minutes: GPT-2 family (LayerNorm, learned positions,
GELU, tied embeddings), 4 layers × 192 wide, block 128, sentencepiece BPE (vocab 8192) trained on first use on the
bundled public-domain English corpus (State of the Union + inaugural addresses, ~2.8 MB).

gptjax train --config experiments/english_base_cpu.py --workdir runs/english_base
gptjax eval --workdir runs/english_base --tasks lambada,wikitext2,hellaswag,arc_easy --data-dir ../shared/data
"""
from gptjax.config import base_config


def get_config():
    c = base_config()
    c.name = "english_base_cpu"
    c.data.dataset = "english"
    c.data.tokenizer = "sentencepiece"
    c.data.vocab_size = 8192
    c.model.block_size = 128
    c.model.n_layer = 4
    c.model.n_head = 4
    c.model.d_model = 192
    c.model.dropout = 0.1
    c.train.batch_size = 16
    c.train.steps = 1500
    c.train.lr = 2e-3
    c.train.min_lr = 2e-4
    c.train.warmup_steps = 100
    c.train.beta2 = 0.99
    c.train.weight_decay = 0.1
    c.train.grad_clip = 1.0
    c.train.eval_every = 250
    c.train.eval_batches = 20
    c.train.checkpoint_every = 250
    return c
