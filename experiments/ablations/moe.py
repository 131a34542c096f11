"""Dense MLP vs mixture of experts on the small Shakespeare model (3 x 96, GELU 384) at equal FLOPs: 8 experts of
the dense width with top-1 routing, and 8 half-width experts with top-2 (both: the dense MLP's active matmuls plus
a 96 x 8 router), against the dense model and a dense model as wide as all 8 experts together (equal total params,
8x the MLP FLOPs, so it trains fewer steps at the same budget).

gptjax ablate --config experiments/ablations/moe.py --workdir runs/ablate_moe --seeds 3
"""
from pathlib import Path

from gptjax.ablate import Ablation
from gptjax.config import load_experiment

EXPERTS = 8


def get_ablation() -> Ablation:
    base = load_experiment(Path(__file__).with_name("base.py"))
    width = 4 * base.model.d_model
    moe = {"model.moe_experts": EXPERTS, "model.moe_aux_loss_weight": 0.01, "model.moe_z_loss_weight": 0.001}
    return Ablation(base=base, variants={
        "dense": {"model.d_ff": width},
        "moe_8x_top1": {**moe, "model.moe_top_k": 1, "model.moe_d_ff": width},
        "moe_8x_half_top2": {**moe, "model.moe_top_k": 2, "model.moe_d_ff": width // 2},
        "dense_equal_params": {"model.d_ff": EXPERTS * width},
    })
