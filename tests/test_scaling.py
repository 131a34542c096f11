"""gptjax.scaling and `gptjax scaling`: counts vs the real model, the sweep's configs, Chinchilla fits on planted
data, IsoFLOP minima, and one clear error per bad input."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from gptjax import config as config_lib
from gptjax.cli import main
from gptjax.config import ModelConfig
from gptjax.errors import GptjaxError
from gptjax.scaling import counts, sweep
from gptjax.scaling import fit as fit_lib
from gptjax.scaling.fit import PAPER_GRID, fit_loss_law
from gptjax.scaling.isoflop import fit_isoflops, fit_profile, group_by_budget
from gptjax.scaling.law import LossLaw, compute_optimal
from gptjax.scaling.points import LossPoint, read_points, read_runs

REPO = Path(__file__).resolve().parent.parent
BASE_EXPERIMENT = str(REPO / "experiments" / "shakespeare_char_cpu.py")
VOCAB = "--config.model.vocab_size=65"  # known vocabulary: no data preparation in these tests
# Hoffmann et al. 2022's fitted law (approach 3), the planted truth
CHINCHILLA = LossLaw(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)
# 2 starts per coordinate (32 L-BFGS runs, not the paper's 4,500, to keep the file fast): 17 of them stop in a local
# optimum (one term absorbed into E), which best-of-grid discards; over 20 noisy seeds this grid's errors equal
# those of the 243-start "coarse" grid
TEST_GRID = {"a": (0.0, 10.0), "b": (0.0, 10.0), "e": (-1.0, 1.0), "alpha": (0.0, 1.0), "beta": (0.0, 1.0)}


def grid_points(law: LossLaw, noise: float = 0.0, seed: int = 0) -> list[LossPoint]:
    """7 sizes × 7 token counts over 3 decades each, loss × exp(N(0, noise))."""
    rng = np.random.default_rng(seed)
    return [LossPoint(n, d, float(law.loss(n, d) * math.exp(rng.normal(0.0, noise) if noise else 0.0)))
            for n in np.geomspace(1e7, 1e10, 7) for d in np.geomspace(1e9, 1e12, 7)]


# ---- counts ------------------------------------------------------------------------------------------------------

VARIANTS = {
    "gpt2_like": {},
    "swiglu_gqa_rope_untied_rms": dict(mlp="swiglu", n_kv_head=2, position="rope", tie_embeddings=False,
                                       norm="rmsnorm", use_bias=False),
    "mqa_sinusoidal_bias": dict(n_kv_head=1, position="sinusoidal", use_bias=True),
    "post_norm_no_bias_alibi": dict(norm_placement="post", use_bias=False, position="alibi"),
    "learned_untied_d_ff_max_positions": dict(tie_embeddings=False, d_ff=72, max_positions=40),
    "scanned_swiglu_layernorm_bias": dict(scan_layers=True, mlp="swiglu", use_bias=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_param_count_equals_the_models(variant):
    from gptjax.model.transformer import abstract_params, count_params

    cfg = ModelConfig(vocab_size=66, block_size=16, n_layer=3, n_head=4, d_model=32, **VARIANTS[variant])
    got = counts.param_counts(cfg)
    assert got.total == count_params(abstract_params(cfg))
    embedding = cfg.padded_vocab * 32 * (1 if cfg.tie_embeddings else 2) + (
        cfg.position_limit * 32 if cfg.position == "learned" else 0)
    assert (got.embedding, got.non_embedding) == (embedding, got.total - embedding)


def test_known_model_sizes_and_flops():
    gpt2 = ModelConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, d_model=768)
    assert counts.param_counts(gpt2).total == 124_475_904  # HF's 124,439,808 + 47 padded vocab rows × 768
    tinyllama = ModelConfig(vocab_size=32000, block_size=2048, n_layer=22, n_head=32, n_kv_head=4, d_model=2048,
                            d_ff=5632, mlp="swiglu", position="rope", norm="rmsnorm", use_bias=False,
                            tie_embeddings=False)
    assert counts.param_counts(tinyllama).total == 1_100_048_384  # TinyLlama-1.1B's published count
    matmul = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 768 * 50304
    assert counts.training_flops_per_token(gpt2) == 6 * matmul + 12 * 12 * 768 * 1024


def test_count_cli_prints_real_values(capsys):
    assert main(["scaling", "count", "--config", BASE_EXPERIMENT, VOCAB, "--json"]) == 0
    values = json.loads(capsys.readouterr().out)
    cfg = dataclasses.replace(config_lib.to_config(config_lib.load_experiment(BASE_EXPERIMENT)).model, vocab_size=65)
    assert values["params_total"] == counts.param_counts(cfg).total == 812_160
    assert values["params_non_embedding"] == 4 * (2 * 128 + 4 * 128 * 128 + 8 * 128 * 128) + 128 == 787_584


# ---- sweep -------------------------------------------------------------------------------------------------------

def test_sweep_writes_loadable_configs_with_the_right_steps(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["scaling", "sweep", "--config", BASE_EXPERIMENT, VOCAB, "--config.train.warmup_steps=100",
                 "--sizes", "1x32,2x64x2", "--tokens", "1e5,4e5", "--out", str(out)]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("gptjax train")]
    plan = json.loads((out / sweep.PLAN_FILE).read_text())["runs"]
    assert [r["name"] for r in plan] == ["L1_d32_D1e5", "L1_d32_D4e5", "L2_d64_D1e5", "L2_d64_D4e5"]
    assert len(commands) == 4
    for run, command in zip(plan, commands):
        path = out / f"{run['name']}.json"
        assert command == f"gptjax train --config {path} --workdir {out / run['name']}"
        cfg = config_lib.to_config(config_lib.load_experiment(path))
        budget = 1e5 if run["name"].endswith("D1e5") else 4e5
        assert cfg.train.steps == round(budget / (12 * 64)) == run["steps"]  # 130 and 521 steps of 768 tokens
        assert (cfg.model.n_layer, cfg.model.d_model) == (run["n_layer"], run["d_model"])
        assert cfg.model.head_dim == (32 if cfg.model.d_model == 64 else 128 // 4)  # 2x64x2: 2 heads; 1x32: base 32
        assert (cfg.train.schedule_steps, cfg.train.decay_steps) == (0, 0)
        assert cfg.train.warmup_steps == min(100, int(0.1 * cfg.train.steps))
        assert run["params"] == counts.param_counts(cfg.model).total


def test_flop_sweep_spends_each_budget_and_widths_keep_the_aspect_ratio():
    base = dataclasses.replace(config_lib.Config(), model=ModelConfig(vocab_size=65, block_size=64, n_layer=4,
                                                                       n_head=4, d_model=128))
    shapes = sweep.shapes_from_widths([64, 128, 256], aspect_ratio=32, head_dim=32)
    assert shapes == [sweep.ModelShape(2, 64, 2), sweep.ModelShape(4, 128, 4), sweep.ModelShape(8, 256, 8)]
    runs = sweep.plan_sweep(base, shapes, flops=[1e12, 1e13])
    per_step = base.train.batch_size * 64
    for run in runs:
        assert abs(run.flops - run.budget) <= 6 * run.params * per_step / 2  # within half a step of the budget
    assert [r.config.train.steps for r in runs[:2]] == [round(c / (6 * runs[0].params) / per_step)
                                                        for c in (1e12, 1e13)]


# ---- approach 3: the L(N, D) fit ---------------------------------------------------------------------------------

def test_paper_grid_and_objective_gradient():
    assert len(PAPER_GRID["a"]) == 6 and len(PAPER_GRID["alpha"]) == 5
    assert math.prod(len(v) for v in PAPER_GRID.values()) == 4500
    points = grid_points(CHINCHILLA, noise=0.01)
    args = tuple(np.log([getattr(p, k) for p in points]) for k in ("params", "tokens", "loss")) + (1e-3,)
    theta = np.array([6.0, 6.1, 0.5, 0.3, 0.25])
    _, grad = fit_lib.objective_and_grad(theta, *args)
    step = 1e-6
    numeric = [(fit_lib.objective_and_grad(theta + step * e, *args)[0] -
                fit_lib.objective_and_grad(theta - step * e, *args)[0]) / (2 * step) for e in np.eye(5)]
    assert grad == pytest.approx(numeric, rel=1e-5)


def test_fit_recovers_the_planted_law_exactly_without_noise():
    law = fit_loss_law(grid_points(CHINCHILLA), grid=TEST_GRID).law
    for name in ("E", "A", "alpha", "B", "beta"):
        assert getattr(law, name) == pytest.approx(getattr(CHINCHILLA, name), rel=1e-6)
    one_start = {"a": (0.0,), "b": (0.0,), "e": (1.0,), "alpha": (0.0,), "beta": (1.0,)}
    assert fit_loss_law(grid_points(CHINCHILLA), grid=one_start).law.E > 2.5  # why the grid: a local optimum


def test_fit_recovers_the_planted_law_under_noise():
    """0.2 % log-normal noise on 49 points: over 20 seeds the errors' std was 0.0027 (α), 0.0029 (β), 0.0074 (E)
    and 0.0033 (a = β/(α+β)); the bounds are ~5 of those, so a correct fit fails them about never and a wrong
    exponent, grid or gradient (errors of 0.05+) always does."""
    law = fit_loss_law(grid_points(CHINCHILLA, noise=0.002, seed=1), grid=TEST_GRID).law
    assert abs(law.alpha - 0.34) < 0.015
    assert abs(law.beta - 0.28) < 0.015
    assert abs(law.E - 1.69) < 0.04
    assert abs(law.params_exponent - 0.28 / 0.62) < 0.015


def test_compute_optimal_closed_form_matches_brute_force():
    sizes = np.geomspace(1e5, 1e14, 400_001)  # steps of 0.005 % in N
    for flops in (1e18, 5.76e23, 1e26):
        n_opt, d_opt = compute_optimal(CHINCHILLA, flops)
        brute = sizes[np.argmin(CHINCHILLA.loss(sizes, flops / (6 * sizes)))]
        assert float(n_opt) == pytest.approx(brute, rel=1e-4)
        assert 6 * n_opt * d_opt == pytest.approx(flops, rel=1e-12)
    # Chinchilla's own budget (5.76e23 FLOPs) gives ~40B params with these coefficients (the paper's approach 3)
    assert 30e9 < float(compute_optimal(CHINCHILLA, 5.76e23)[0]) < 45e9


# ---- approach 2: IsoFLOP profiles --------------------------------------------------------------------------------

def planted_isoflop_points(exponent: float = 0.5, coefficient: float = 0.1) -> list[LossPoint]:
    """4 budgets × 7 sizes with loss exactly 2 + 0.05·(ln N − ln N*(C))², N* = coefficient·C^exponent."""
    points = []
    for flops in (1e15, 1e16, 1e17, 1e18):
        best = coefficient * flops ** exponent
        for n in best * np.geomspace(0.1, 5.0, 7):
            points.append(LossPoint(float(n), flops / (6 * n), 2.0 + 0.05 * math.log(n / best) ** 2))
    return points


def test_isoflop_minima_recover_the_planted_optimum():
    fit = fit_isoflops(planted_isoflop_points())
    assert [p.budget for p in fit.profiles] == pytest.approx([1e15, 1e16, 1e17, 1e18], rel=1e-9)
    for profile in fit.profiles:
        assert profile.params_opt == pytest.approx(0.1 * profile.budget ** 0.5, rel=1e-6)
        assert profile.loss_min == pytest.approx(2.0, abs=1e-9)
    assert fit.params_law.exponent == pytest.approx(0.5, abs=1e-6)
    assert fit.params_law.coefficient == pytest.approx(0.1, rel=1e-5)
    assert fit.tokens_law.exponent == pytest.approx(0.5, abs=1e-6)


def test_isoflop_on_the_chinchilla_law_agrees_with_the_closed_form():
    """Profiles sampled from L(N, D) itself (not parabolas): the minima land within 3 % of the closed form and the
    exponent within 0.01 of β/(α+β) (the loss is only near-parabolic in ln N over 1.5 decades)."""
    points = []
    for flops in (1e19, 1e20, 1e21, 1e22):
        n_opt = float(compute_optimal(CHINCHILLA, flops)[0])
        points += [LossPoint(n, flops / (6 * n), float(CHINCHILLA.loss(n, flops / (6 * n))))
                   for n in n_opt * np.geomspace(0.2, 5.0, 9)]
    fit = fit_isoflops(points)
    for profile in fit.profiles:
        assert profile.params_opt == pytest.approx(float(compute_optimal(CHINCHILLA, profile.budget)[0]), rel=0.03)
    assert fit.params_law.exponent == pytest.approx(CHINCHILLA.params_exponent, abs=0.01)


def test_budgets_group_within_the_tolerance():
    points = [LossPoint(1.0, c / 6, 1.0) for c in (1e12, 1.1e12, 1.2e12, 3e12, 3.3e12, 1e13)]
    assert [len(g) for g in group_by_budget(points, 1.25)] == [3, 2, 1]
    assert fit_profile(points[:2]) is None  # fewer than three sizes


# ---- runs directories and the fit command -------------------------------------------------------------------------

def write_run(run_dir: Path, cfg: config_lib.Config, loss: float | None) -> None:
    """A run directory as the training loop leaves it: config.json and metrics.jsonl (val_loss at eval steps)."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(config_lib.to_json(cfg))
    steps = cfg.train.steps
    lines = [{"step": 10, "loss": 3.0}, {"step": steps // 2, "val_loss": 2.9}]
    if loss is not None:
        lines += [{"step": steps, "loss": loss}, {"step": steps, "val_loss": loss, "val_ppl": math.exp(loss)}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 9')


@pytest.fixture
def runs_dir(tmp_path) -> tuple[Path, LossLaw]:
    """A finished IsoFLOP sweep of 4 sizes × 3 budgets with losses from a planted law, plus one unfinished run."""
    base = dataclasses.replace(config_lib.Config(), model=ModelConfig(vocab_size=65, block_size=64, n_layer=2,
                                                                       n_head=2, d_model=64))
    planted = LossLaw(E=1.0, A=30.0, alpha=0.35, B=60.0, beta=0.3)
    shapes = sweep.parse_shapes("1x32,2x64,3x96,4x128", head_dim=32)
    out = tmp_path / "sweep"
    runs = sweep.plan_sweep(base, shapes, flops=[3e11, 1e12, 3e12])
    sweep.write_sweep(runs, out)
    for run in runs:
        write_run(out / run.name, run.config, float(planted.loss(run.params, run.tokens)))
    write_run(out / "unfinished", runs[0].config, None)
    return out, planted


def test_read_runs_takes_finished_runs_only(runs_dir):
    out, planted = runs_dir
    points = read_runs(out)
    assert len(points) == 12 and "unfinished" not in {p.name for p in points}
    point = next(p for p in points if p.name == "L2_d64_C1e12")
    cfg = config_lib.to_config(config_lib.load_experiment(out / "L2_d64_C1e12.json"))
    assert point.params == counts.param_counts(cfg.model).total
    assert point.tokens == cfg.train.steps * 12 * 64
    assert point.loss == pytest.approx(float(planted.loss(point.params, point.tokens)))
    assert read_runs(out / "L2_d64_C1e12", "non_embedding")[0].params == counts.param_counts(cfg.model).non_embedding


def test_fit_cli_prints_coefficients_optimum_and_plot(runs_dir, tmp_path, capsys, monkeypatch):
    out, planted = runs_dir
    monkeypatch.setitem(fit_lib.GRIDS, "coarse", TEST_GRID)
    png = tmp_path / "isoflop.png"
    assert main(["scaling", "fit", "--runs", str(out), "--grid", "coarse", "--budget", "1e15",
                 "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "points: 12 from" in text
    coefficients = dict(part.split(" = ") for part in text.split("approach 3")[1].splitlines()[1].split("  ") if part)
    assert float(coefficients["alpha"]) == pytest.approx(planted.alpha, abs=1e-3)
    assert float(coefficients["beta"]) == pytest.approx(planted.beta, abs=1e-3)
    assert float(coefficients["E"]) == pytest.approx(planted.E, abs=1e-2)
    assert "approach 2: IsoFLOP profiles over 3 budgets" in text and "optimum at C = 1e+15" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_points_file_csv_and_json(tmp_path):
    csv_path = tmp_path / "points.csv"
    csv_path.write_text("N,D,loss,name\n1e6,2e7,3.5,a\n2e6,4e7,3.25,b\n")
    json_path = tmp_path / "points.json"
    json_path.write_text(json.dumps([{"params": 1e6, "tokens": 2e7, "loss": 3.5}]))
    assert read_points(csv_path) == [LossPoint(1e6, 2e7, 3.5, "a"), LossPoint(2e6, 4e7, 3.25, "b")]
    assert read_points(json_path) == [LossPoint(1e6, 2e7, 3.5, "")]


# ---- bad input: one clear error each ------------------------------------------------------------------------------

def one_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptjax: error: "), captured.err
    return lines[0]


def test_fewer_points_than_coefficients(tmp_path, capsys):
    path = tmp_path / "points.csv"
    path.write_text("params,tokens,loss\n"
                    + "".join(f"{n},{20 * n},{3 - i / 10}\n" for i, n in enumerate((1e6, 2e6, 4e6, 8e6))))
    line = one_error_line(capsys, ["scaling", "fit", "--runs", str(path)])
    assert "needs at least 5 points, got 4" in line


def test_non_positive_loss(tmp_path, capsys):
    path = tmp_path / "points.json"
    path.write_text(json.dumps([{"params": 1e6 * 2 ** i, "tokens": 1e8, "loss": 3.0 - i} for i in range(6)]))
    line = one_error_line(capsys, ["scaling", "fit", "--runs", str(path)])
    assert "point 4: params, tokens and loss must be finite and > 0, got N=8e+06, D=1e+08, loss=0" in line


def test_runs_dir_without_a_finished_run(runs_dir, tmp_path, capsys):
    out, _ = runs_dir
    empty = tmp_path / "only_unfinished"
    empty.mkdir()
    (out / "unfinished").rename(empty / "unfinished")
    line = one_error_line(capsys, ["scaling", "fit", "--runs", str(empty)])
    assert "has no finished run (1 run dirs with config.json" in line


def test_unknown_config_key(capsys):
    line = one_error_line(capsys, ["scaling", "count", "--config", BASE_EXPERIMENT, "--config.model.widht=3"])
    assert "unknown config key 'model.widht'" in line


def test_bad_sizes_budgets_and_missing_vocab(capsys, tmp_path):
    out = str(tmp_path / "s")
    assert "is not LAYERSxWIDTH" in one_error_line(
        capsys, ["scaling", "sweep", "--config", BASE_EXPERIMENT, VOCAB, "--sizes", "4by128", "--tokens", "1e6",
                 "--out", out])
    assert "less than one step" in one_error_line(
        capsys, ["scaling", "sweep", "--config", BASE_EXPERIMENT, VOCAB, "--sizes", "1x32", "--tokens", "100",
                 "--out", out])
    assert "not a multiple of the base config's head dim 32" in one_error_line(
        capsys, ["scaling", "sweep", "--config", BASE_EXPERIMENT, VOCAB, "--sizes", "2x48", "--tokens", "1e6",
                 "--out", out])
    with pytest.raises(GptjaxError, match="model.vocab_size is 0"):
        counts.param_counts(ModelConfig())
    assert "overrides apply to `gptjax scaling count` and `sweep`" in one_error_line(
        capsys, ["scaling", "fit", "--runs", out, "--config.model.n_layer=2"])
