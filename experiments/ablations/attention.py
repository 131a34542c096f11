"""Attention patterns on the small Shakespeare model at equal FLOPs: dense, local (a 16-token window) and strided
(8-token blocks plus summary positions). The sparse patterns attend to less context, so they train more steps.

gptjax ablate --config experiments/ablations/attention.py --workdir runs/ablate_attention --seeds 3
"""
from pathlib import Path

from gptjax.ablate import Ablation
from gptjax.config import load_experiment


def get_ablation() -> Ablation:
    return Ablation(base=load_experiment(Path(__file__).with_name("base.py")), budget="flops",
                    variants={"dense": {"model.attention": "dense"},
                              "local": {"model.attention": "local", "model.window": 16},
                              "strided": {"model.attention": "strided", "model.stride": 8}})
