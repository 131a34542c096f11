"""`gptjax ablate --config experiments/ablations/X.py --workdir runs/X`: variants x seeds at a matched budget, reported.

Each run trains in WORKDIR/VARIANT/seedK (a swept variant: WORKDIR/VARIANT/KEY=VALUE/seedK) as an ordinary
`gptjax train` run; rerunning the command finishes the missing or interrupted runs and reuses the finished ones.
--print-commands lists one `gptjax train` line per run instead (for a cluster); --report-only writes the report from
whatever runs finished: WORKDIR/report.md, report.json and val_loss.png. A swept variant is reported at the value
whose runs score best on the first half of the val split, with the scores of the second half.
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("train an ablation's variants x seeds (x swept values) at equal FLOPs / tokens / steps and report the "
        "differences")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gptjax.ablate.runner import BUDGETS

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("--config", required=True, help="an ablation file, experiments/ablations/X.py")
    p.add_argument("--workdir", required=True, help="the ablation's root: one subdirectory per variant and seed")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (train.seed 0 .. N-1)")
    p.add_argument("--budget", choices=BUDGETS, help="what every variant spends equally (default: the ablation's)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", action="store_true", help="print one `gptjax train` line per run, train none")
    mode.add_argument("--report-only", action="store_true", help="report the finished runs, train none")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from gptjax.ablate import report as report_lib
    from gptjax.ablate import runner as ablation_lib

    ablation = ablation_lib.load_ablation(args.config)
    plan = ablation_lib.plan_ablation(ablation, args.workdir, args.seeds, args.budget or "",
                                      name=Path(args.config).stem)
    if args.print_commands:
        ablation_lib.write_plan_files(plan, ablation.base)
        for planned in plan.runs:
            print(ablation_lib.train_command(planned, plan.root))
        return 0
    if not args.report_only:
        ablation_lib.cpu_device_split(plan)
        ablation_lib.write_plan_files(plan, ablation.base)
        print(ablation_lib.plan_summary(plan))
        ablation_lib.execute(plan)
    report = report_lib.write_report(plan)
    print(report_lib.markdown_table(report))
    print(f"report: {plan.root / report_lib.REPORT_MD}, {plan.root / report_lib.REPORT_JSON}, "
          f"{plan.root / report_lib.PLOT_FILE}")
    return 0
