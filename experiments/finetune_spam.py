"""SMS spam classification finetuned from the English base (experiments/english_base_cpu.py), as rasbt's
LLMs-from-scratch ch06 does from GPT-2: a 2-class head on the last real token, class-balanced 747 + 747 messages split
70/10/20. Everything trains (finetune.freeze=none); last_n_blocks:1 is ch06's recipe, lora the cheap one.

gptjax train --config experiments/finetune_spam.py --workdir runs/spam --config.finetune.data=../shared/data
gptjax eval --workdir runs/spam --out runs/spam/results.json      # the test split: {"results": {"sms_spam": ...}}
"""
from pathlib import Path

from gptjax.config import load_experiment


def get_config():
    c = load_experiment(Path(__file__).with_name("english_base_cpu.py"))
    c.name = "finetune_spam"
    c.train.objective = "classify"
    c.train.init_from = "runs/english_base"
    c.model.num_classes = 2
    c.model.dropout = 0.0
    c.finetune.task = "sms_spam"
    c.finetune.freeze = "none"
    c.train.batch_size = 16
    c.train.steps = 400  # ~6 epochs of the 1,045 training messages
    c.train.lr = 3e-4
    c.train.min_lr = 3e-5
    c.train.warmup_steps = 20
    c.train.weight_decay = 0.1
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    return c
