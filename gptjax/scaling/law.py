"""The Chinchilla loss law L(N, D) = E + A/N^α + B/D^β and its compute-optimal allocation under C = 6·N·D.

Minimising L(N, C/(6N)) over N: dL/dN = −αA·N^(−α−1) + βB·K^(−β)·N^(β−1) = 0 with K = C/6, so
N^(α+β) = (αA / (βB))·K^β, i.e. N_opt = G·K^(β/(α+β)) with G = (αA/(βB))^(1/(α+β)), and D_opt = K / N_opt
= K^(α/(α+β)) / G (Hoffmann et al. 2022, eq. 4). The stationary point is the minimum: L → ∞ at both ends."""
from __future__ import annotations

import dataclasses

import numpy as np

from gptjax.errors import GptjaxError


@dataclasses.dataclass(frozen=True)
class LossLaw:
    """Fitted coefficients of L(N, D) = E + A/N^α + B/D^β."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, params, tokens) -> np.ndarray:
        """Predicted loss at N = `params`, D = `tokens` (arrays broadcast)."""
        n, d = np.asarray(params, np.float64), np.asarray(tokens, np.float64)
        return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

    @property
    def params_exponent(self) -> float:
        """a in N_opt ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def tokens_exponent(self) -> float:
        """b in D_opt ∝ C^b (a + b = 1)."""
        return self.alpha / (self.alpha + self.beta)


def compute_optimal(law: LossLaw, flops) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) minimising the law's loss at a FLOP budget C = 6·N·D (the closed form above)."""
    if law.alpha <= 0 or law.beta <= 0:
        raise GptjaxError(f"the fitted exponents (α={law.alpha:.3g}, β={law.beta:.3g}) are not both positive, so the "
                          f"loss has no compute-optimal size; the runs do not span enough N and D to fit the law")
    flops = np.asarray(flops, np.float64)
    if np.any(flops <= 0):
        raise GptjaxError("a FLOP budget must be > 0")
    k = flops / 6.0
    g = (law.alpha * law.A / (law.beta * law.B)) ** (1.0 / (law.alpha + law.beta))
    n_opt = g * k ** law.params_exponent
    return n_opt, k / n_opt
