"""Interleaved local and global layers against all-global and all-local attention, at equal FLOPs: local layers
(a 16-token window) attend to less, so those variants train more steps. With 3 layers Gemma 2's "LG" (cycled:
L, G, L) and Gemma 3's "LLG" both have two local layers; they differ in where the global one sits.

gptjax ablate --config experiments/ablations/attention_layers.py --workdir runs/ablate_attention_layers --seeds 1
"""
from pathlib import Path

from gptjax.ablate import Ablation
from gptjax.config import load_experiment

WINDOW = 16


def get_ablation() -> Ablation:
    return Ablation(base=load_experiment(Path(__file__).with_name("base.py")), budget="flops",
                    variants={"global": {},
                              "LG": {"model.layer_pattern": "LG", "model.window": WINDOW},
                              "LLG": {"model.layer_pattern": "LLG", "model.window": WINDOW},
                              "local": {"model.layer_pattern": "L", "model.window": WINDOW}})
