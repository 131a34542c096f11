"""The IsoFLOP figure: loss vs N per budget with its parabola and minimum; the minima vs C with the fitted laws."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gptjax import fileio
from gptjax.errors import GptjaxError
from gptjax.scaling.isoflop import IsoflopFit
from gptjax.scaling.law import LossLaw, compute_optimal


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GptjaxError("--plot needs matplotlib; pip install matplotlib (or leave out --plot)") from None
    return plt


def plot_isoflops(fit: IsoflopFit, path: str | Path, law: LossLaw | None = None) -> Path:
    """Writes the two-panel IsoFLOP figure to `path` (PNG); with `law`, approach 3's N_opt(C) beside approach 2's."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (profiles_ax, optima_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(fit.profiles)))
    for profile, color in zip(fit.profiles, colors):
        sizes = np.array([p.params for p in profile.points])
        span = np.geomspace(min(sizes.min(), profile.params_opt), max(sizes.max(), profile.params_opt), 100)
        profiles_ax.scatter(sizes, [p.loss for p in profile.points], color=color, s=18)
        profiles_ax.plot(span, np.polyval(profile.coefficients, np.log(span)), color=color,
                         label=f"C = {profile.budget:.2g}")
        profiles_ax.scatter([profile.params_opt], [profile.loss_min], color="none" if profile.extrapolated else color,
                            marker="*", s=120, edgecolors="black", zorder=3)
    profiles_ax.set(xscale="log", xlabel="parameters N", ylabel="final loss",
                    title="IsoFLOP profiles (hollow star: minimum outside the sizes run)")
    profiles_ax.xaxis.set_minor_formatter(plt.NullFormatter())
    profiles_ax.legend(fontsize=8)
    budgets = np.array([p.budget for p in fit.profiles])
    span = np.geomspace(budgets.min() / 2, budgets.max() * 2, 50)
    optima_ax.scatter(budgets, [p.params_opt for p in fit.profiles], marker="*", s=120, edgecolors="black", zorder=3,
                      color=[("none" if p.extrapolated else c) for p, c in zip(fit.profiles, colors)])
    optima_ax.plot(span, fit.params_law(span), color="black",
                   label=f"IsoFLOP: N_opt ∝ C^{fit.params_law.exponent:.2f}")
    if law is not None:
        optima_ax.plot(span, compute_optimal(law, span)[0], color="tab:red", linestyle="--",
                       label=f"L(N,D) fit: N_opt ∝ C^{law.params_exponent:.2f}")
    optima_ax.set(xscale="log", yscale="log", xlabel="training FLOPs C = 6ND", ylabel="compute-optimal N",
                  title="optimal size vs compute")
    optima_ax.legend(fontsize=8)
    fig.tight_layout()
    with fileio.atomic_open(path, "wb") as out:
        fig.savefig(out, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path
