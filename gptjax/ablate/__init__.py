"""Ablation sweeps: variants x seeds of one base config at a matched budget (`ablation`), and their report
(`report`). `gptjax ablate` is the command line."""
from gptjax.ablate.runner import BUDGETS, Ablation, Plan, PlannedRun, execute, load_ablation, plan_ablation
from gptjax.ablate.report import welch_test, write_report

__all__ = ["BUDGETS", "Ablation", "Plan", "PlannedRun", "execute", "load_ablation", "plan_ablation", "welch_test",
           "write_report"]
