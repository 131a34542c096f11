"""Fitting the loss law to (N, D, loss) points: Chinchilla's approach 3 (Hoffmann et al. 2022, appendix D.2).

The Huber loss (δ = 1e-3) between the log of the predicted and the observed loss is minimised with L-BFGS over
θ = (a, b, e, α, β), where log L̂ = LSE(a − α·log N, b − β·log D, e) (A = e^a, B = e^b, E = e^e), from every
point of a grid of initialisations; the best local optimum wins."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np

from gptjax.errors import GptjaxError
from gptjax.scaling.law import LossLaw
from gptjax.scaling.points import LossPoint, check_points

HUBER_DELTA = 1e-3
N_COEFFICIENTS = 5  # E, A, α, B, β
# the paper's grid: α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}
PAPER_GRID = {
    "a": tuple(np.arange(0.0, 30.0, 5.0)), "b": tuple(np.arange(0.0, 30.0, 5.0)),
    "e": tuple(np.arange(-1.0, 1.5, 0.5)),
    "alpha": tuple(np.arange(0.0, 2.5, 0.5)), "beta": tuple(np.arange(0.0, 2.5, 0.5)),
}
# 3 values per coordinate (243 starts, ~20x faster): the corners and middle of the paper's ranges
COARSE_GRID = {"a": (0.0, 10.0, 20.0), "b": (0.0, 10.0, 20.0), "e": (-1.0, 0.0, 1.0), "alpha": (0.0, 0.5, 1.0),
               "beta": (0.0, 0.5, 1.0)}
GRIDS = {"paper": PAPER_GRID, "coarse": COARSE_GRID}
THETA_ORDER = ("a", "b", "e", "alpha", "beta")


@dataclasses.dataclass(frozen=True)
class LawFit:
    """A fitted law, the Huber objective it reached (summed over points) and how it was found."""

    law: LossLaw
    objective: float
    n_points: int
    n_starts: int


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals `r` and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    return value, np.clip(r, -delta, delta)


def objective_and_grad(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                       delta: float) -> tuple[float, np.ndarray]:
    """Σ Huber(LSE(a − α·log N, b − β·log D, e) − log L) and its gradient in θ = (a, b, e, α, β)."""
    a, b, e, alpha, beta = theta
    terms_3P = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top_P = terms_3P.max(axis=0)
    weights_3P = np.exp(terms_3P - top_P)
    total_P = weights_3P.sum(axis=0)
    predicted_P = top_P + np.log(total_P)
    weights_3P /= total_P
    value_P, slope_P = huber(predicted_P - log_loss, delta)
    grad = np.array([
        np.sum(slope_P * weights_3P[0]), np.sum(slope_P * weights_3P[1]), np.sum(slope_P * weights_3P[2]),
        -np.sum(slope_P * weights_3P[0] * log_n), -np.sum(slope_P * weights_3P[1] * log_d),
    ])
    return float(value_P.sum()), grad


def law_of(theta: np.ndarray) -> LossLaw:
    a, b, e, alpha, beta = (float(x) for x in theta)
    return LossLaw(E=float(np.exp(e)), A=float(np.exp(a)), alpha=alpha, B=float(np.exp(b)), beta=beta)


def _minimize():
    try:
        from scipy.optimize import minimize
    except ImportError:
        raise GptjaxError("fitting the loss law needs scipy (scipy.optimize L-BFGS); pip install scipy") from None
    return minimize


def fit_loss_law(points: Sequence[LossPoint], grid: dict[str, Sequence[float]] | None = None,
                 delta: float = HUBER_DELTA) -> LawFit:
    """The law minimising the summed Huber loss of log residuals, L-BFGS from every start of `grid` (the paper's
    by default: 4,500 starts)."""
    check_points(points, N_COEFFICIENTS, "fitting L(N, D) = E + A/N^α + B/D^β (5 coefficients)")
    minimize = _minimize()
    grid = PAPER_GRID if grid is None else grid
    log_n = np.log([p.params for p in points])
    log_d = np.log([p.tokens for p in points])
    log_loss = np.log([p.loss for p in points])
    scale = 1.0 / (delta * delta)  # the objective in units of δ² (residuals ~δ give values ~1): scipy's tolerances fit

    def scaled_objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = objective_and_grad(theta, log_n, log_d, log_loss, delta)
        return value * scale, grad * scale

    starts = list(itertools.product(*(grid[name] for name in THETA_ORDER)))
    best_theta, best_value = None, np.inf
    for start in starts:
        result = minimize(scaled_objective, np.array(start, np.float64), jac=True, method="L-BFGS-B",
                          options={"maxiter": 1000, "ftol": 1e-9, "gtol": 1e-6})
        if np.all(np.isfinite(result.x)) and result.fun < best_value:
            best_theta, best_value = result.x, float(result.fun)
    if best_theta is None:
        raise GptjaxError("the loss-law fit diverged from every initialisation; check the points (N, D and loss "
                          "must span several sizes and budgets)")
    return LawFit(law_of(best_theta), best_value / scale, len(points), len(starts))
