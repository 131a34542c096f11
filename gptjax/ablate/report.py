"""An ablation's report: per variant its size, cost, speed and final scores over seeds, each compared with the
reference variant (difference, 95% interval and p from Welch's t-test over seeds), as report.md, report.json and
val-loss curves (vs FLOPs and vs wall time, seed band shaded) in val_loss.png.

When variants are swept (`Sweep`), each is reported at its chosen value: the one whose runs' final checkpoints score
the lowest mean loss on the first half of the val split; the table's val loss and bits/byte are the chosen runs' on
the second half (`gptjax.ablate.heldout`), and a third panel of the plot shows every value's loss (the sweep curve).

Everything is read from the runs' own files (metrics.jsonl, checkpoints), so runs trained elsewhere from the
printed commands report the same way.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Sequence

from gptjax import fileio
from gptjax.ablate import heldout
from gptjax.ablate.runner import WALL_KEY, Plan, PlannedRun, flops_per_token, is_finished
from gptjax.errors import GptjaxError
from gptjax.train.metrics import read_metrics

CONFIDENCE = 0.95
REPORT_MD, REPORT_JSON, PLOT_FILE = "report.md", "report.json", "val_loss.png"
EMBEDDING_PARAMS = ("embedding", "pos_embedding", "lm_head")  # top-level params counted as embeddings
_NOT_SCORES = ("_stderr", "/n", "/chance")


# ---- statistics --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Welch:
    """mean(b) - mean(a) with its `CONFIDENCE` interval, Welch's t, Welch–Satterthwaite df and two-sided p."""

    difference: float
    low: float
    high: float
    t: float
    df: float
    p: float


def welch_test(a: Sequence[float], b: Sequence[float]) -> Welch | None:
    """Welch's unequal-variance t-test of b against a; None when either has fewer than two values or both have no
    spread."""
    if len(a) < 2 or len(b) < 2:
        return None
    var_a, var_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(var_a + var_b)
    if se == 0:
        return None
    difference = statistics.fmean(b) - statistics.fmean(a)
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (len(a) - 1) + var_b ** 2 / (len(b) - 1))
    t = difference / se
    half_width = t_quantile(0.5 + CONFIDENCE / 2, df) * se
    return Welch(difference, difference - half_width, difference + half_width, t, df, two_sided_p(t, df))


def two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    try:
        from scipy import stats
    except ImportError:
        return _regularized_beta(df / (df + t * t), df / 2, 0.5)
    return float(2 * stats.t.sf(abs(t), df))


def t_quantile(q: float, df: float) -> float:
    """The `q` quantile (q > 0.5) of Student's t with `df` degrees of freedom."""
    try:
        from scipy import stats
    except ImportError:
        low, high = 0.0, 1e6
        for _ in range(200):
            mid = (low + high) / 2
            low, high = (mid, high) if _regularized_beta(df / (df + mid * mid), df / 2, 0.5) / 2 > 1 - q else (low, mid)
        return (low + high) / 2
    return float(stats.t.ppf(q, df))


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), by the continued fraction (modified Lentz), mirrored where it converges slowly."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _regularized_beta(1 - x, b, a)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation; None for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


# ---- reading runs ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one finished run scored, read from its metrics.jsonl."""

    variant: str
    seed: int
    val_loss: float
    val_bpb: float
    tokens_per_s: float | None  # median of the logged throughput
    scores: dict[str, float]  # downstream TASK/METRIC at the last step
    curve: list[tuple[int, float, float | None]]  # (step, val loss, wall seconds) at every eval


def run_result(run: PlannedRun) -> RunResult:
    """The final scores and the val-loss curve of a finished run."""
    rows = read_metrics(run.workdir)
    evals = [(step, row) for step, row in rows.items() if "val_loss" in row and step <= run.cfg.train.steps]
    if not evals:
        raise GptjaxError(f"{run.workdir} has a final checkpoint but no val loss in its metrics.jsonl")
    last_step, last = evals[-1]
    speeds = [row["tokens_per_s"] for row in rows.values() if "tokens_per_s" in row]
    scores = {key: value for key, value in rows.get(last_step, {}).items()
              if "/" in key and not key.endswith(_NOT_SCORES)}
    return RunResult(variant=run.variant, seed=run.seed, val_loss=last["val_loss"], val_bpb=last["val_bpb"],
                     tokens_per_s=statistics.median(speeds) if speeds else None, scores=scores,
                     curve=[(step, row["val_loss"], row.get(WALL_KEY)) for step, row in evals])


def param_counts(run: PlannedRun) -> tuple[int, int]:
    """(all params, params outside the token/position embeddings and an untied output head)."""
    from gptjax.model.transformer import abstract_params, count_params

    params = abstract_params(run.counted_model)
    embedding = sum(count_params(params[name]) for name in EMBEDDING_PARAMS if name in params)
    return count_params(params), count_params(params) - embedding


# ---- the report --------------------------------------------------------------------------------------------------


def _stat(values: Sequence[float]) -> dict:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n": len(values)}


def _comparison(reference: Sequence[float], values: Sequence[float]) -> dict | None:
    result = welch_test(reference, values)
    return None if result is None else dataclasses.asdict(result)


def metric_values(results: Sequence[RunResult]) -> dict[str, list[float]]:
    """Each final metric (val loss, bits/byte, downstream scores) over a variant's finished seeds."""
    values = {"val_loss": [r.val_loss for r in results], "val_bpb": [r.val_bpb for r in results]}
    for key in sorted({k for r in results for k in r.scores}):
        values[key] = [r.scores[key] for r in results if key in r.scores]
    return values


def variant_entry(plan: Plan, variant: str, results: list[RunResult], reference: list[RunResult],
                  value: float | None = None) -> dict:
    """report.json's entry for one variant (at swept `value`): size, cost, speed, scores over seeds and their
    differences to the reference variant."""
    planned = plan.runs_at(variant, value)
    first = planned[0]
    params, non_embedding = param_counts(first)
    metrics, reference_metrics = metric_values(results), metric_values(reference)
    speeds = [r.tokens_per_s for r in results if r.tokens_per_s is not None]
    return {
        "variant": variant,
        "overrides": dict(plan.variant_overrides[variant]),
        "steps": first.cfg.train.steps,
        "tokens": first.cfg.train.steps * first.cfg.train.batch_size * first.cfg.model.block_size,
        "params": params,
        "non_embedding_params": non_embedding,
        "flops_per_token": flops_per_token(first.counted_model),
        "seeds_finished": sorted(r.seed for r in results),
        "seeds_planned": len(planned),
        "tokens_per_s": statistics.fmean(speeds) if speeds else None,
        "metrics": {key: _stat(values) for key, values in metrics.items() if values},
        "vs_reference": None if variant == plan.reference else {
            key: _comparison(reference_metrics.get(key, []), values) for key, values in metrics.items()},
        "curves": [{"seed": r.seed, "curve": r.curve} for r in results],
    }


def at_report_half(result: RunResult, scores: dict) -> RunResult:
    """`result` with its final val loss and bits/byte taken from the held-out report half."""
    return dataclasses.replace(result, val_loss=scores[heldout.REPORT]["loss"], val_bpb=scores[heldout.REPORT]["bpb"])


def sweep_selection(plan: Plan, finished: list[PlannedRun]) -> dict:
    """report.json's `selection`: which halves of the val split chose and which report, and per variant every swept
    value's mean held-out losses over its finished seeds and the value chosen (None: every value diverged)."""
    scores = {run.workdir: heldout.heldout_scores(run, run.cfg.train.steps, plan.heldout_tokens) for run in finished}
    sweeps = []
    for variant in plan.variants:
        done = {value: [run for run in finished if run.variant == variant and run.swept_value == value]
                for value in plan.values_of(variant)}
        points = [heldout.sweep_point(value, [scores[run.workdir] for run in runs])
                  for value, runs in done.items() if runs]
        chosen = heldout.choose(points)
        sweep = plan.sweeps.get(variant)
        sweeps.append({"variant": variant, "key": sweep.key if sweep else None,
                       "scaled": dict(sweep.scaled) if sweep else {}, "values_planned": len(done),
                       "points": [dataclasses.asdict(p) for p in points],
                       "chosen": None if chosen is None else chosen.value,
                       "chosen_select_loss": None if chosen is None else chosen.select_loss,
                       "chosen_runs": [] if chosen is None else [str(run.workdir) for run in done[chosen.value]]})
    halves = heldout.val_halves(heldout.split_size(finished[0].cfg), plan.heldout_tokens)
    return {"select": halves[heldout.SELECT].describe(), "report": halves[heldout.REPORT].describe(),
            "rule": "lowest mean over finished seeds of the final checkpoint's loss on the select half",
            "sweeps": sweeps, "scores": {str(path): value for path, value in scores.items()}}


def build_report(plan: Plan) -> dict:
    """report.json's content from whatever runs of `plan` finished; raises when none has."""
    finished = [run for run in plan.runs if is_finished(run)]
    if not finished:
        raise GptjaxError(f"no finished run in {plan.root} to report on; run the ablation first (without "
                          f"--report-only), or train the runs `--print-commands` lists")
    selection = sweep_selection(plan, finished) if plan.tuned else None
    chosen = {variant: None for variant in plan.variants} if selection is None else {
        entry["variant"]: entry["chosen"] for entry in selection["sweeps"]}
    results = {}
    for variant in plan.variants:
        # a swept variant none of whose values has a finite selection loss has no chosen runs
        runs = [run for run in finished if run.variant == variant and run.swept_value == chosen[variant]]
        results[variant] = [run_result(run) if selection is None
                            else at_report_half(run_result(run), selection["scores"][str(run.workdir)])
                            for run in runs]
    variants = [variant_entry(plan, variant, results[variant], results[plan.reference], chosen[variant])
                for variant in plan.variants if results[variant]]
    if selection is not None:
        by_variant = {entry["variant"]: entry for entry in selection["sweeps"]}
        for entry in variants:
            sweep = by_variant[entry["variant"]]
            entry.update(swept_key=sweep["key"], chosen_value=sweep["chosen"],
                         select_loss=sweep["chosen_select_loss"])
    return {
        "name": plan.name, "budget": plan.budget, "budget_amount": plan.budget_amount, "reference": plan.reference,
        "confidence": CONFIDENCE, "runs_finished": len(finished), "runs_planned": len(plan.runs),
        "variants": variants, "selection": selection,
    }


def _count(n: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def _mean_std_text(stat: dict | None, digits: int = 4) -> str:
    if stat is None:
        return "—"
    return f"{stat['mean']:.{digits}f}" + ("" if stat["std"] is None else f" ± {stat['std']:.{digits}f}")


def _difference_text(comparison: dict | None) -> tuple[str, str]:
    if comparison is None:
        return "—", "—"
    c = comparison
    marker = " *" if c["p"] < 1 - CONFIDENCE else ""
    return f"{c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]", f"{c['p']:.3g}{marker}"


def markdown_table(report: dict) -> str:
    """One row per variant: seeds, steps, params, FLOPs/token, tokens/s, val loss and bits/byte (mean ± std over
    seeds), the val-loss difference to the reference (95% interval, Welch p; * = significant) and downstream scores."""
    reference = report["reference"]
    tuned = report.get("selection") is not None
    score_keys = sorted({k for v in report["variants"] for k in v["metrics"] if "/" in k})
    half = " (report half)" if tuned else ""
    header = ["variant", *(("swept", "chosen", "select-half loss") if tuned else ()), "seeds", "steps", "params",
              "non-emb params", "FLOPs/token", "tokens/s", f"val loss{half}", f"Δ val loss vs {reference} (95% CI)",
              "p (Welch)", f"val bits/byte{half}", *score_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in report["variants"]:
        vs = v["vs_reference"]
        difference, p = ("(reference)", "") if vs is None else _difference_text(vs.get("val_loss"))
        chosen = (v["swept_key"] or "—", _value_text(v["chosen_value"]), _loss_text(v["select_loss"])) if tuned else ()
        row = [v["variant"], *chosen, f"{len(v['seeds_finished'])}/{v['seeds_planned']}", str(v["steps"]),
               _count(v["params"]), _count(v["non_embedding_params"]), _count(v["flops_per_token"]),
               "—" if v["tokens_per_s"] is None else f"{v['tokens_per_s']:.0f}",
               _mean_std_text(v["metrics"]["val_loss"]), difference, p, _mean_std_text(v["metrics"]["val_bpb"]),
               *(_mean_std_text(v["metrics"].get(k)) for k in score_keys)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _value_text(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def _loss_text(loss: float | None) -> str:
    return "diverged" if loss is None else f"{loss:.4f}"


def sweep_table(selection: dict) -> str:
    """One row per variant: each swept value with its mean select-half loss (report-half loss in brackets), the
    chosen one in bold."""
    lines = ["| variant | swept | value: select-half loss (report-half loss) |", "|---|---|---|"]
    for sweep in selection["sweeps"]:
        cells = []
        for point in sweep["points"]:
            cell = (f"{_value_text(point['value'])}: {_loss_text(point['select_loss'])} "
                    f"({_loss_text(point['report_loss'])})")
            cells.append(f"**{cell}**" if point["value"] == sweep["chosen"] and point["select_loss"] is not None
                         else cell)
        lines.append(f"| {sweep['variant']} | {sweep['key'] or '—'} | {' · '.join(cells) or 'no finished run'} |")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """report.md: what was compared, at what budget, how swept values were chosen, the tables, and the plot."""
    selection = report.get("selection")
    chosen_how = [] if selection is None else [
        f"Each swept variant is reported at its chosen value: the one with the {selection['rule']} "
        f"(select half: {selection['select']}); the val loss, bits/byte and Δ are the chosen runs' on the report "
        f"half ({selection['report']}), which took no part in the choice.", ""]
    sweeps = [] if selection is None else ["", "The sweeps (mean over finished seeds; chosen in bold):", "",
                                           sweep_table(selection)]
    return "\n".join([
        f"# Ablation {report['name']}", "",
        f"Budget: equal {report['budget']} ({report['budget_amount']:.4g} per run). Runs finished: "
        f"{report['runs_finished']}/{report['runs_planned']}. Mean ± std over seeds; "
        f"Δ = variant − {report['reference']} "
        f"with its {CONFIDENCE:.0%} interval from Welch's t-test over seeds (* = p < {1 - CONFIDENCE:.2g}).", "",
        *chosen_how, markdown_table(report), *sweeps, "", f"![val loss]({PLOT_FILE})", ""])


def _seed_band(curves: list[dict], x_of) -> tuple[list[float], list[float], list[float]]:
    """(x, mean val loss, std) at the steps every seed evaluated; x is `x_of(step, [wall seconds of the seeds])`."""
    per_seed = [{step: (loss, wall) for step, loss, wall in c["curve"]} for c in curves]
    steps = sorted(set.intersection(*(set(s) for s in per_seed)))
    xs, means, stds = [], [], []
    for step in steps:
        x = x_of(step, [s[step][1] for s in per_seed])
        if x is None:
            continue
        mean, std = mean_std([s[step][0] for s in per_seed])
        xs.append(x), means.append(mean), stds.append(std or 0.0)
    return xs, means, stds


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GptjaxError("the ablation plot needs matplotlib (pip install 'gptjax[plots]' or pip install "
                          "matplotlib); report.md and report.json were written") from None
    return plt


def plot_sweeps(selection: dict, axis) -> None:
    """The sweep curve: each swept variant's mean select-half loss (solid) and report-half loss (dashed) against
    the swept value, the chosen value starred; log-x when every value is positive; unswept variants as a dotted
    level at their select-half loss."""
    values = [p["value"] for s in selection["sweeps"] if s["key"] for p in s["points"]]
    for sweep in selection["sweeps"]:
        points = [p for p in sweep["points"] if p["select_loss"] is not None]
        if not points:
            continue
        if sweep["key"] is None:
            axis.axhline(points[0]["select_loss"], linestyle=":", color="gray", label=f"{sweep['variant']} (not swept)")
            continue
        xs = [p["value"] for p in points]
        line, = axis.plot(xs, [p["select_loss"] for p in points], marker="o", markersize=4,
                          label=f"{sweep['variant']} ({sweep['key'].split('.')[-1]})")
        reported = [(p["value"], p["report_loss"]) for p in points if p["report_loss"] is not None]
        axis.plot(*zip(*reported), linestyle="--", linewidth=1, color=line.get_color(), alpha=0.6)
        best = next(p for p in points if p["value"] == sweep["chosen"])
        axis.plot([best["value"]], [best["select_loss"]], marker="*", markersize=14, color=line.get_color())
    if values and min(values) > 0:
        axis.set_xscale("log")
    axis.set_xlabel("swept value (key in the legend)")
    axis.set_ylabel("final loss: select half (solid), report half (dashed)")
    axis.set_title("sweeps, ★ = chosen", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def plot_curves(report: dict, path: Path) -> Path:
    """val_loss.png: val loss vs training FLOPs and vs wall time, one curve per variant (mean over seeds), ± std
    shaded; with sweeps, the chosen runs' curves and a third panel of the sweeps (`plot_sweeps`)."""
    plt = _pyplot()
    selection = report.get("selection")
    figure, axes = plt.subplots(1, 2 if selection is None else 3, figsize=(11 if selection is None else 16.5, 4.2))
    by_flops, by_wall = axes[:2]
    if selection is not None:
        plot_sweeps(selection, axes[2])
    for v in report["variants"]:
        flops_per_step = v["flops_per_token"] * v["tokens"] / v["steps"]
        for axis, x_of in ((by_flops, lambda step, walls: step * flops_per_step),
                           (by_wall, lambda step, walls: None if None in walls else statistics.fmean(walls))):
            xs, means, stds = _seed_band(v["curves"], x_of)
            if not xs:
                continue
            line, = axis.plot(xs, means, marker="o", markersize=3, label=v["variant"])
            axis.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                              color=line.get_color(), alpha=0.2)
    for axis, label in ((by_flops, "training FLOPs"), (by_wall, "wall time since the first step (s)")):
        axis.set_xlabel(label)
        axis.set_ylabel("val loss" + ("" if selection is None else " (in training, at the chosen value)"))
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"{report['name']}: val loss, mean ± std over seeds")
    figure.tight_layout()
    with fileio.atomic_open(path, "wb") as out:
        figure.savefig(out, format="png", dpi=120)
    plt.close(figure)
    return path


def write_report(plan: Plan) -> dict:
    """Writes val_loss.png, report.md and last report.json into the ablation's root, each whole; returns the report."""
    report = build_report(plan)
    plot_curves(report, plan.root / PLOT_FILE)
    fileio.write_text_atomic(plan.root / REPORT_MD, markdown_report(report))
    fileio.write_json_atomic(plan.root / REPORT_JSON, report)
    return report
