"""AdamW, Muon, Lion and Adafactor on the small Shakespeare model (3 x 96) at equal tokens, each at its own best
learning rate: every optimizer trains at four or five peak lrs (factor 2 apart, min_lr = lr/10 on the base's
cosine, the grid extended until the best lr is inside it), and is compared at the lr whose runs score best on the
first half of the val split (reported on the second half).

- adamw: train.lr from 2e-3 (the base's) to 3.2e-2; at 600 steps the optimum lies well above the base's lr.
- muon: train.muon_lr (the hidden matrices' Newton–Schulz-orthogonalised momentum, Keller Jordan's shape scaling)
  from 5e-3 to 8e-2; embeddings, head and norms stay on AdamW at the base's 2e-3, on the same schedule.
- lion: train.lr from 5e-4 to 4e-3 (sign updates have RMS 1, so ~4x below AdamW's).
- adafactor: train.lr from 2e-3 to 1.6e-2 (absolute steps, update clipping at RMS 1, no momentum); its second
  moments are factored for matrices whose second-largest dim is at least 32, since the default (128) would factor
  nothing in a 96-wide model.

gptjax ablate --config experiments/ablations/optimizers.py --workdir runs/ablate_optimizers --seeds 1
"""
from pathlib import Path

from gptjax.ablate import Ablation, Sweep
from gptjax.config import load_experiment

ADAM_LRS = (2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)
ADAFACTOR_LRS = (2e-3, 4e-3, 8e-3, 1.6e-2)
MUON_LRS = (5e-3, 1e-2, 2e-2, 4e-2, 8e-2)
LION_LRS = (5e-4, 1e-3, 2e-3, 4e-3)
MIN_LR = {"train.min_lr": 0.1}


def get_ablation() -> Ablation:
    return Ablation(
        base=load_experiment(Path(__file__).with_name("base.py")), budget="tokens",
        variants={"adamw": {},
                  "muon": {"train.optimizer": "muon"},
                  "lion": {"train.optimizer": "lion"},
                  "adafactor": {"train.optimizer": "adafactor", "train.adafactor_factor_min_dim": 32}},
        sweep=Sweep(key="train.lr", values=ADAM_LRS, scaled=MIN_LR),
        sweeps={"muon": Sweep(key="train.muon_lr", values=MUON_LRS),
                "lion": Sweep(key="train.lr", values=LION_LRS, scaled=MIN_LR),
                "adafactor": Sweep(key="train.lr", values=ADAFACTOR_LRS, scaled=MIN_LR)})
