"""GELU vs SwiGLU MLP at equal params (and so equal FLOPs) on the small Shakespeare model (96 wide): GELU's
4 x 96 = 384 hidden units against SwiGLU's 256 (three 96 x 256 matrices hold as much as two 96 x 384).

gptjax ablate --config experiments/ablations/mlp.py --workdir runs/ablate_mlp --seeds 3
"""
from pathlib import Path

from gptjax.ablate import Ablation
from gptjax.config import load_experiment


def get_ablation() -> Ablation:
    base = load_experiment(Path(__file__).with_name("base.py"))
    gelu_hidden = 4 * base.model.d_model
    swiglu_hidden = 2 * gelu_hidden // 3  # 3 * d_model * swiglu_hidden == 2 * d_model * gelu_hidden
    return Ablation(base=base, variants={"gelu": {"model.mlp": "gelu", "model.d_ff": gelu_hidden},
                                         "swiglu": {"model.mlp": "swiglu", "model.d_ff": swiglu_hidden}})
