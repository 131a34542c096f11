"""Ablations (`gptjax ablate`, `experiments/ablations/`): named variants x seeds of one base config trained at a
matched budget, resumably (`runner`), optionally each at the best value of a swept hyperparameter chosen on held-out
data (`heldout`), and their report against the baseline (`report`)."""
from gptjax.ablate.report import welch_test, write_report
from gptjax.ablate.runner import BUDGETS, Ablation, Plan, PlannedRun, Sweep, execute, load_ablation, plan_ablation

__all__ = ["BUDGETS", "Ablation", "Plan", "PlannedRun", "Sweep", "execute", "load_ablation", "plan_ablation",
           "welch_test", "write_report"]
