"""Scaling laws: parameter/FLOP counts of a config (counts), sweeps of sizes × budgets (sweep), the runs' (N, D,
loss) points (points), Chinchilla's L(N, D) fit (law, fit) and IsoFLOP profiles (isoflop, plot)."""
from gptjax.scaling.counts import ParamCounts, param_counts, training_flops, training_flops_per_token
from gptjax.scaling.fit import LawFit, fit_loss_law
from gptjax.scaling.isoflop import IsoflopFit, IsoflopProfile, fit_isoflops
from gptjax.scaling.law import LossLaw, compute_optimal
from gptjax.scaling.points import LossPoint, read_points
from gptjax.scaling.sweep import ModelShape, SweepRun, plan_sweep, write_sweep

__all__ = [
    "ParamCounts", "param_counts", "training_flops", "training_flops_per_token", "LawFit", "fit_loss_law",
    "IsoflopFit", "IsoflopProfile", "fit_isoflops", "LossLaw", "compute_optimal", "LossPoint", "read_points",
    "ModelShape", "SweepRun", "plan_sweep", "write_sweep",
]
