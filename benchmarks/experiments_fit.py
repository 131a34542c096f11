"""Does every shipped large experiment fit the hardware it names? Each experiments/X.py with a `TOPOLOGY` is
compiled ahead of time for that Cloud TPU topology as written (`gptjax compile-check`, no TPU needed), and the
per-chip memory, the verdict and the step time at 40% MFU go into a table. Run from the repository root:

    python benchmarks/experiments_fit.py [--only gpt2_124m llama_7b] [--timeout 600] \\
        [--out benchmarks/results/experiments_fit.md]

Exit status 1 when an experiment does not fit its topology (or does not compile).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from levers import command_text, parse_report, versions

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "experiments_fit.md"
GIB = 1 << 30


def targets(only: list[str] | None) -> dict[str, str]:
    """experiment name -> the topology its file names (`TOPOLOGY = "v5e-4"`), for every experiment that names one."""
    found = {}
    for path in sorted((REPO / "experiments").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if getattr(module, "TOPOLOGY", None) and (not only or path.stem in only):
            found[path.stem] = module.TOPOLOGY
    return found


def check(name: str, topology: str, timeout: float) -> tuple[list[str], dict, float]:
    cmd = [sys.executable, "-m", "gptjax", "compile-check", "--config", f"experiments/{name}.py",
           "--topology", topology]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        fields = parse_report(proc.stdout) if proc.returncode in (0, 1) else {"note": proc.stderr.strip()[-300:]}
    except subprocess.TimeoutExpired:
        fields = {"note": f"not compiled in {timeout:.0f} s"}
    return cmd, fields, time.perf_counter() - started


def row(name: str, topology: str, fields: dict) -> str:
    total, hbm = fields.get("total"), fields.get("hbm")
    memory = f"{total / GIB:.2f} of {hbm / GIB:.0f} GiB ({total / hbm:.0%})" if total and hbm else "—"
    step = f"{fields['step_s_at_40']:.2f} s" if "step_s_at_40" in fields else "—"
    verdict = {"yes": "yes", "no": "**no**"}.get(fields.get("fits"), f"**failed**: {fields.get('note', '')}")
    return f"| {name} | {topology} | {fields.get('mesh', '—')} | {memory} | {verdict} | {step} |"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", help="experiment names (default: every experiment with a TOPOLOGY)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per compile-check before it is killed")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    rows, commands, all_fit = [], [], True
    for name, topology in targets(args.only).items():
        cmd, fields, seconds = check(name, topology, args.timeout)
        rows.append(row(name, topology, fields))
        commands.append(f"- `{command_text(cmd)}` ({seconds:.0f} s)")
        all_fit &= fields.get("fits") == "yes"
        print(rows[-1], flush=True)
    lines = ["# Shipped experiments on their target topologies", "",
             f"`python benchmarks/experiments_fit.py` on {datetime.date.today()}; {versions()}. Each experiment as "
             f"written (no overrides), compiled ahead of time for its topology; memory is per chip; step time from "
             f"the analytic FLOPs at 40% MFU.", "",
             "| experiment | topology | mesh | memory per chip | fits | step at 40% MFU |",
             "|---|---|---|---:|---|---:|", *rows, "", "Commands:", "", *commands]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    return 0 if all_fit else 1


if __name__ == "__main__":
    sys.exit(main())
