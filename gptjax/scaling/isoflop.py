"""IsoFLOP profiles, Chinchilla's approach 2: per FLOP budget, a parabola of loss in log N; its minimum is that
budget's optimal size, and the optima over budgets give N_opt ∝ C^a (and D_opt = C / (6·N_opt) ∝ C^(1−a))."""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from gptjax.errors import GptjaxError
from gptjax.scaling.points import LossPoint, check_points

BUDGET_TOLERANCE = 1.25  # runs whose C = 6ND lie within this factor of a group's smallest share its budget
MIN_SIZES = 3  # distinct model sizes a parabola needs


@dataclasses.dataclass(frozen=True)
class IsoflopProfile:
    """The runs of one FLOP budget and the parabola loss = c2·x² + c1·x + c0 in x = ln N through them."""

    budget: float  # geometric mean of the runs' C = 6·N·D
    points: tuple[LossPoint, ...]
    coefficients: tuple[float, float, float]  # c2, c1, c0

    @property
    def params_opt(self) -> float:
        c2, c1, _ = self.coefficients
        return math.exp(-c1 / (2 * c2))

    @property
    def loss_min(self) -> float:
        c2, c1, c0 = self.coefficients
        return c0 - c1 * c1 / (4 * c2)

    @property
    def extrapolated(self) -> bool:
        """Whether the minimum lies outside the sizes that were run (then it is a guess)."""
        sizes = [p.params for p in self.points]
        return not min(sizes) <= self.params_opt <= max(sizes)


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = coefficient · x^exponent."""

    coefficient: float
    exponent: float

    def __call__(self, x) -> np.ndarray:
        return self.coefficient * np.asarray(x, np.float64) ** self.exponent


@dataclasses.dataclass(frozen=True)
class IsoflopFit:
    """Profiles with a minimum, and N_opt(C), D_opt(C) fitted through their minima."""

    profiles: tuple[IsoflopProfile, ...]
    params_law: PowerLaw
    tokens_law: PowerLaw
    skipped_budgets: int  # budgets with too few sizes or no minimum (a parabola opening downwards)


def group_by_budget(points: Sequence[LossPoint], tolerance: float = BUDGET_TOLERANCE) -> list[list[LossPoint]]:
    """Points grouped by FLOP budget: sorted by C, a new group starts where C exceeds the group's first by
    more than `tolerance` times."""
    groups: list[list[LossPoint]] = []
    for point in sorted(points, key=lambda p: p.flops):
        if groups and point.flops <= groups[-1][0].flops * tolerance:
            groups[-1].append(point)
        else:
            groups.append([point])
    return groups


def fit_profile(points: Sequence[LossPoint]) -> IsoflopProfile | None:
    """The parabola through one budget's runs, None with fewer than MIN_SIZES sizes or no minimum."""
    sizes = np.log([p.params for p in points])
    if len(np.unique(sizes)) < MIN_SIZES:
        return None
    c2, c1, c0 = np.polyfit(sizes, [p.loss for p in points], 2)
    if c2 <= 0:
        return None
    budget = float(np.exp(np.mean(np.log([p.flops for p in points]))))
    return IsoflopProfile(budget, tuple(points), (float(c2), float(c1), float(c0)))


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """Least squares of ln y = ln k + a·ln x."""
    exponent, log_coefficient = np.polyfit(np.log(x), np.log(y), 1)
    return PowerLaw(float(np.exp(log_coefficient)), float(exponent))


def fit_isoflops(points: Sequence[LossPoint], tolerance: float = BUDGET_TOLERANCE) -> IsoflopFit:
    """IsoFLOP profiles of `points` and the power laws through their minima (needs two budgets with a minimum)."""
    check_points(points, 2 * MIN_SIZES, "IsoFLOP profiles (2 budgets × 3 sizes)")
    groups = group_by_budget(points, tolerance)
    profiles = tuple(p for p in (fit_profile(g) for g in groups) if p is not None)
    if len(profiles) < 2:
        raise GptjaxError(f"IsoFLOP profiles need at least 2 FLOP budgets with {MIN_SIZES}+ model sizes and a loss "
                          f"minimum inside them; found {len(profiles)} of {len(groups)} budgets (runs group by "
                          f"C = 6·N·D within ×{tolerance}); plan the sweep with --flops and sizes on both sides "
                          f"of the optimum (at "
                          f"each budget the loss should fall, then rise with N)")
    budgets = [p.budget for p in profiles]
    params_law = fit_power_law(budgets, [p.params_opt for p in profiles])
    tokens_law = fit_power_law(budgets, [p.budget / (6.0 * p.params_opt) for p in profiles])
    return IsoflopFit(profiles, params_law, tokens_law, len(groups) - len(profiles))
