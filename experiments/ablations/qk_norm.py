"""QK-norm (RMSNorm on each query and key head, as Qwen3 and Gemma 3) on and off, at the base's learning rate and at
20x it, where attention logits can grow unchecked and QK-norm is expected to matter (Wortsman et al. 2023). Equal
steps: QK-norm's FLOPs are negligible.

gptjax ablate --config experiments/ablations/qk_norm.py --workdir runs/ablate_qk_norm --seeds 1
"""
from pathlib import Path

from gptjax.ablate import Ablation
from gptjax.config import load_experiment

HIGH_LR = 4e-2


def get_ablation() -> Ablation:
    return Ablation(base=load_experiment(Path(__file__).with_name("base.py")), budget="flops",
                    variants={"plain": {},
                              "qk_norm": {"model.qk_norm": True},
                              "plain_lr4e-2": {"train.lr": HIGH_LR, "train.min_lr": HIGH_LR / 10},
                              "qk_norm_lr4e-2": {"model.qk_norm": True, "train.lr": HIGH_LR,
                                                 "train.min_lr": HIGH_LR / 10}})
