"""Position schemes on the small Shakespeare model, equal FLOPs: learned table, sinusoidal, RoPE, ALiBi, none
(causal attention alone).

gptjax ablate --config experiments/ablations/positions.py --workdir runs/ablate_positions --seeds 3
"""
from pathlib import Path

from gptjax.ablate import Ablation
from gptjax.config import POSITIONS, load_experiment


def get_ablation() -> Ablation:
    return Ablation(base=load_experiment(Path(__file__).with_name("base.py")),
                    variants={position: {"model.position": position} for position in POSITIONS})
