"""Key/value head sharing on the small Shakespeare model (4 query heads) at equal FLOPs: MHA (4 KV heads), GQA (2)
and MQA (1). Fewer KV heads cost fewer FLOPs, so those variants train more steps.

gptjax ablate --config experiments/ablations/heads.py --workdir runs/ablate_heads --seeds 3
"""
from pathlib import Path

from gptjax.ablate import Ablation
from gptjax.config import load_experiment


def get_ablation() -> Ablation:
    return Ablation(base=load_experiment(Path(__file__).with_name("base.py")),
                    variants={"mha": {"model.n_kv_head": 4}, "gqa": {"model.n_kv_head": 2},
                              "mqa": {"model.n_kv_head": 1}})
