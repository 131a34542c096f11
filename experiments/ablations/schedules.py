"""Learning-rate schedules on the small Shakespeare model (3 x 96, AdamW, 600 steps with 50 of warmup), each at its
own best peak lr: cosine to lr/10 over the run, WSD (constant, then a linear decay to lr/10 over the last fifth) and
inverse square root (lr·sqrt(warmup/step), no final decay). Every schedule trains at four peak lrs, factor 2 apart
around the optimum AdamW found at this budget (experiments/ablations/optimizers.py), and is compared at the one whose
runs score best on the first half of the val split (reported on the second half).

gptjax ablate --config experiments/ablations/schedules.py --workdir runs/ablate_schedules --seeds 1
"""
from pathlib import Path

from gptjax.ablate import Ablation, Sweep
from gptjax.config import load_experiment

LRS = (4e-3, 8e-3, 1.6e-2, 3.2e-2)


def get_ablation() -> Ablation:
    return Ablation(base=load_experiment(Path(__file__).with_name("base.py")), budget="steps",
                    variants={"cosine": {}, "wsd": {"train.schedule": "wsd"},
                              "inverse_sqrt": {"train.schedule": "inverse_sqrt"}},
                    sweep=Sweep(key="train.lr", values=LRS, scaled={"train.min_lr": 0.1}))
