"""DPO from human preferences on top of the SFT model (experiments/finetune_sft.py), as rasbt's ch07/04: preference
records (chosen / rejected responses to the same Alpaca prompt), beta 0.1, the frozen reference = the SFT model (its
log-probs precomputed once; finetune.reference=live keeps it in the train state instead), 1 epoch.

gptjax train --config experiments/finetune_dpo.py --workdir runs/dpo --config.finetune.data=../shared/data
gptjax eval --workdir runs/dpo      # DPO loss, reward accuracy and margin on the test split
"""
from pathlib import Path

from gptjax.config import load_experiment


def get_config():
    c = load_experiment(Path(__file__).with_name("english_base_cpu.py"))
    c.name = "finetune_dpo"
    c.train.objective = "dpo"
    c.train.init_from = "runs/sft"
    c.model.dropout = 0.0
    c.finetune.task = "preference"
    c.finetune.beta = 0.1
    c.finetune.reference = "precomputed"
    c.train.batch_size = 8
    c.train.steps = 117  # 1 epoch of the 935 training pairs
    c.train.lr = 5e-5
    c.train.min_lr = 5e-6
    c.train.warmup_steps = 10
    c.train.eval_every = 39
    c.train.checkpoint_every = 39
    return c
