"""Instruction SFT of the English base (experiments/english_base_cpu.py) on rasbt's ch07 Alpaca-style records
(1,100: 85 % train / 10 % test / 5 % val): the Alpaca prompt template, loss on the response tokens (and the closing
<|endoftext|>) only; held-out responses are written to the workdir's samples.jsonl at the end.

gptjax train --config experiments/finetune_sft.py --workdir runs/sft --config.finetune.data=../shared/data
gptjax eval --workdir runs/sft      # response loss / perplexity on the test split
"""
from pathlib import Path

from gptjax.config import load_experiment


def get_config():
    c = load_experiment(Path(__file__).with_name("english_base_cpu.py"))
    c.name = "finetune_sft"
    c.train.objective = "sft"
    c.train.init_from = "runs/english_base"
    c.model.dropout = 0.0
    c.finetune.task = "instruction"
    c.finetune.template = "alpaca"
    c.finetune.pack = False
    c.train.batch_size = 8
    c.train.steps = 470  # ~4 epochs of the 935 training records
    c.train.lr = 5e-4
    c.train.min_lr = 5e-5
    c.train.warmup_steps = 20
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    return c
