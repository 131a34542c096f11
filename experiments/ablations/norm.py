"""LayerNorm vs RMSNorm on the small Shakespeare model, equal FLOPs.

gptjax ablate --config experiments/ablations/norm.py --workdir runs/ablate_norm --seeds 3
"""
from pathlib import Path

from gptjax.ablate import Ablation
from gptjax.config import load_experiment


def get_ablation() -> Ablation:
    return Ablation(base=load_experiment(Path(__file__).with_name("base.py")),
                    variants={"layernorm": {"model.norm": "layernorm"}, "rmsnorm": {"model.norm": "rmsnorm"}})
