"""`gptjax scaling count|sweep|fit`: parameter and FLOP counts, scaling sweeps, and Chinchilla fits of their losses.

  gptjax scaling count --config experiments/X.py [--config.model.d_model=256]
  gptjax scaling sweep --config BASE.py --sizes 2x64,4x128 (--tokens 1e6,4e6 | --flops 1e12,4e12) --out DIR
  gptjax scaling fit --runs DIR|points.csv [--budget 1e18] [--plot isoflop.png]
"""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from gptjax.errors import GptjaxError, note

if TYPE_CHECKING:
    from gptjax.scaling.fit import LawFit
    from gptjax.scaling.isoflop import IsoflopFit

HELP = "scaling laws: count params/FLOPs, generate size × budget sweeps, fit L(N, D) and IsoFLOP profiles"
TAKES_OVERRIDES = True  # count and sweep: --config.a.b=v changes the (base) config


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="scaling_command", required=True)
    count = sub.add_parser("count", help="total and non-embedding params, training FLOPs per token",
                           description="Parameters and training FLOPs/token of a config, computed from the config.")
    count.add_argument("--config", required=True, help="an experiment file (experiments/X.py) or a run's config.json")
    count.add_argument("--seq-len", type=int, default=0,
                       help="context length for the attention FLOPs (default: block_size)")
    count.add_argument("--json", action="store_true", help="print one JSON object instead of lines")

    sweep = sub.add_parser("sweep", help="one config per model size × budget, and the `gptjax train` commands",
                           description="Writes OUT/NAME.json per run and OUT/sweep.json; prints the train commands.")
    sweep.add_argument("--config", required=True, help="the base experiment file or config.json")
    sizes = sweep.add_mutually_exclusive_group(required=True)
    sizes.add_argument("--sizes", help="LAYERSxWIDTH[xHEADS],... e.g. 2x64,3x96,4x128 (heads: keep the base head dim)")
    sizes.add_argument("--widths", help="d_model values, e.g. 64,96,128, with depth = width / --aspect-ratio")
    sweep.add_argument("--aspect-ratio", type=float, default=32.0, help="with --widths: d_model / n_layer (default 32)")
    budgets = sweep.add_mutually_exclusive_group(required=True)
    budgets.add_argument("--tokens", help="training-token budgets D, e.g. 1e6,4e6 (steps = D / (batch × block))")
    budgets.add_argument("--flops", help="FLOP budgets C, e.g. 1e12,4e12: each size trains on D = C / (6·N) tokens "
                                         "(IsoFLOP profiles)")
    sweep.add_argument("--out", required=True, help="directory for the configs; each run trains into OUT/NAME/")

    fit = sub.add_parser("fit", help="fit L(N, D) = E + A/N^α + B/D^β and IsoFLOP profiles; print the optimum",
                         description="Chinchilla approaches 3 (Huber fit of L(N, D)) and 2 (IsoFLOP profiles).")
    fit.add_argument("--runs", required=True,
                     help="a sweep directory of finished runs, or a CSV/JSON of params,tokens,loss")
    fit.add_argument("--budget", type=float, default=0.0,
                     help="FLOP budget C for the optimum (default: the largest run's)")
    fit.add_argument("--plot", help="write the IsoFLOP figure to this PNG")
    fit.add_argument("--params", choices=("total", "non_embedding"), default="total",
                     help="which parameter count is N for runs read from a directory (default total, as Chinchilla)")
    fit.add_argument("--grid", choices=("paper", "coarse"), default="paper",
                     help="L-BFGS initialisations: the paper's 4,500 or a coarse 243 (faster)")
    fit.add_argument("--budget-tolerance", type=float, default=1.25,
                     help="runs whose 6·N·D agree within this factor share an IsoFLOP budget")


def _si(x: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _config_with_vocab(path: str, overrides: list[str]):
    """The config, with model.vocab_size taken from its data's tokenizer (preparing the data once) when it is 0."""
    from gptjax.cli.common import load_config

    cfg = load_config(path, overrides)
    if cfg.model.vocab_size == 0:
        from gptjax.data.tokenizer import with_vocab
        from gptjax.prepare.resolve import open_data

        try:
            tokenizer = open_data(cfg)[2]
        except GptjaxError as e:
            raise GptjaxError(f"model.vocab_size is 0, to be taken from the data's tokenizer, "
                              f"and the data could not be "
                              f"opened ({e}); set --config.model.vocab_size=N (50257 for GPT-2 BPE)") from None
        cfg = with_vocab(cfg, tokenizer.vocab_size)
        note(f"model.vocab_size=0: took {cfg.model.vocab_size} from the data's tokenizer")
    return cfg


def run_count(args: argparse.Namespace, overrides: list[str]) -> int:
    from gptjax.scaling.counts import param_counts, training_flops_per_token

    cfg = _config_with_vocab(args.config, overrides)
    m, counts = cfg.model, param_counts(cfg.model)
    seq_len = args.seq_len or m.block_size
    flops = training_flops_per_token(m, seq_len)
    values = {"params_total": counts.total, "params_non_embedding": counts.non_embedding,
              "params_embedding": counts.embedding, "flops_per_token": flops, "six_n": 6.0 * counts.total,
              "seq_len": seq_len}
    if args.json:
        print(json.dumps(values))
        return 0
    print(f"model: {m.n_layer} layers x {m.d_model} wide, {m.n_head} heads ({m.kv_heads} kv), {m.mlp}, "
          f"{m.position} positions, vocab {m.vocab_size} (padded {m.padded_vocab})")
    print(f"params: {counts.total} ({_si(counts.total)}) total = {counts.non_embedding} "
          f"({_si(counts.non_embedding)}) non-embedding + {counts.embedding} ({_si(counts.embedding)}) embedding")
    print(f"training FLOPs/token: {flops:.4g} ({_si(flops)}) at seq_len {seq_len}; 6·N = {6.0 * counts.total:.4g}")
    return 0


def run_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    from gptjax.scaling import sweep

    base = _config_with_vocab(args.config, overrides)
    head_dim = base.model.head_dim
    if args.sizes:
        shapes = sweep.parse_shapes(args.sizes, head_dim)
    else:
        widths = [int(w) for w in sweep.parse_numbers(args.widths, "--widths")]
        shapes = sweep.shapes_from_widths(widths, args.aspect_ratio, head_dim)
    runs = sweep.plan_sweep(base, shapes, tokens=sweep.parse_numbers(args.tokens, "--tokens") if args.tokens else (),
                            flops=sweep.parse_numbers(args.flops, "--flops") if args.flops else ())
    commands = sweep.write_sweep(runs, args.out)
    for run, command in zip(runs, commands):
        print(f"# {run.name}: N={_si(run.params)} D={_si(run.tokens)} C={run.flops:.3g} steps={run.config.train.steps}")
        print(command)
    print(f"# then: gptjax scaling fit --runs {args.out}")
    return 0


def _optimum_line(params_opt: float, flops: float, predicted_loss: float | None = None) -> str:
    tokens_opt = flops / (6.0 * params_opt)
    loss = f", predicted loss {predicted_loss:.4f}" if predicted_loss is not None else ""
    return (f"  optimum at C = {flops:.3g}: N_opt = {_si(params_opt)}, D_opt = {_si(tokens_opt)} "
            f"(D/N = {tokens_opt / params_opt:.3g}){loss}")


def _print_law(law_fit: LawFit, budget: float) -> bool:
    """Prints approach 3's coefficients and optimum; False when the law has no compute-optimal size."""
    from gptjax.scaling.law import compute_optimal

    law = law_fit.law
    print(f"approach 3: L(N, D) = E + A/N^alpha + B/D^beta (Huber delta=1e-3 on log loss, L-BFGS from "
          f"{law_fit.n_starts} starts, objective {law_fit.objective:.3g})")
    print(f"  E = {law.E:.4g}  A = {law.A:.4g}  alpha = {law.alpha:.4f}  B = {law.B:.4g}  beta = {law.beta:.4f}")
    try:
        n_opt = float(compute_optimal(law, budget)[0])
    except GptjaxError as e:
        print(f"  no compute-optimal size: {e}")
        return False
    print(f"  N_opt ∝ C^{law.params_exponent:.3f}, D_opt ∝ C^{law.tokens_exponent:.3f}")
    print(_optimum_line(n_opt, budget, float(law.loss(n_opt, budget / (6.0 * n_opt)))))
    return True


def _print_isoflops(iso: IsoflopFit, budget: float) -> None:
    """Prints approach 2's minima per budget, the power laws through them and the optimum at `budget`."""
    print(f"approach 2: IsoFLOP profiles over {len(iso.profiles)} budgets"
          + (f" ({iso.skipped_budgets} budgets skipped: <3 sizes or no minimum)" if iso.skipped_budgets else ""))
    for profile in iso.profiles:
        where = " (outside the sizes run: extrapolated)" if profile.extrapolated else ""
        print(f"  C = {profile.budget:.3g}: {len(profile.points)} runs, N_opt = {_si(profile.params_opt)}, "
              f"min loss {profile.loss_min:.4f}{where}")
    print(f"  N_opt = {iso.params_law.coefficient:.3g}·C^{iso.params_law.exponent:.3f}, "
          f"D_opt = {iso.tokens_law.coefficient:.3g}·C^{iso.tokens_law.exponent:.3f}")
    print(_optimum_line(float(iso.params_law(budget)), budget))


def run_fit(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise GptjaxError("--config.* overrides apply to `gptjax scaling count` and `sweep`, not `fit`")
    from gptjax.scaling.fit import GRIDS, fit_loss_law
    from gptjax.scaling.isoflop import fit_isoflops
    from gptjax.scaling.points import read_points

    points = read_points(args.runs, args.params)
    flops = [p.flops for p in points]
    budget = args.budget or max(flops)
    print(f"points: {len(points)} from {args.runs} (N = {args.params} params, C = 6·N·D from {min(flops):.3g} "
          f"to {max(flops):.3g})")
    law_fit = fit_loss_law(points, grid=GRIDS[args.grid])
    has_optimum = _print_law(law_fit, budget)
    try:
        iso = fit_isoflops(points, args.budget_tolerance)
    except GptjaxError as e:
        if args.plot:
            raise GptjaxError(f"--plot draws the IsoFLOP profiles, which could not be fitted: {e}") from None
        note(f"no IsoFLOP fit (approach 2): {e}")
        return 0
    _print_isoflops(iso, budget)
    if args.plot:
        from gptjax.scaling.plot import plot_isoflops

        print(f"plot: {plot_isoflops(iso, args.plot, law_fit.law if has_optimum else None)}")
    return 0


COMMANDS = {"count": run_count, "sweep": run_sweep, "fit": run_fit}


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    return COMMANDS[args.scaling_command](args, overrides)
