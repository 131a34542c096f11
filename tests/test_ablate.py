"""`gptjax ablate`: budget matching, checks before any run, resume, the report's statistics and files, the
printed commands, and sweeps (planning, selection on the held-out half of val, their report, bad input)."""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
import shutil
import statistics
from pathlib import Path

import pytest
from conftest import REPO, dir_snapshot, tiny_config

from gptjax import config as config_lib
from gptjax.ablate import heldout
from gptjax.ablate import report as report_lib
from gptjax.ablate import runner as ablation_lib
from gptjax.ablate.runner import Ablation, Sweep
from gptjax.cli import main
from gptjax.cli.common import split_config_overrides
from gptjax.errors import GptjaxError, RunInterrupted

SHIPPED = sorted(p for p in (REPO / "experiments" / "ablations").glob("*.py") if p.name != "base.py")

# The tiny base every test varies: 1 layer, 2 heads of 16, block 32, batch 4, GELU 128 wide, learned positions;
# Shakespeare char (65 symbols, padded to 128). Its FLOPs/token by hand: matmul params 4096 (q, o: 2*32*32; k, v:
# 2*32*32) + 8192 (MLP) + 4096 (head) = 16384, so 6*16384 + 12*1*32*32 (attention over the block) = 110592.
TINY_MODEL = {"block_size": 32, "n_layer": 1, "n_head": 2, "window": 8}
TINY_TRAIN = {"batch_size": 4, "steps": 12, "eval_every": 6, "log_every": 2}
DENSE_FLOPS_PER_TOKEN = 110592
LOCAL_FLOPS_PER_TOKEN = 6 * 16384 + 12 * 32 * 8  # a window of 8: 101376
MQA_FLOPS_PER_TOKEN = 6 * (16384 - 1024) + 12 * 32 * 32  # k, v of one head: 104448


def tiny_base_file(cache_dir: Path, where: Path) -> Path:
    """The tiny base as a saved config (which `gptjax.config.load_experiment` reads like an experiment file)."""
    path = where / "tiny_base.json"
    path.write_text(config_lib.to_json(tiny_config(cache_dir, model=TINY_MODEL, train=TINY_TRAIN)))
    return path


def write_ablation_file(path: Path, cache_dir: Path, variants: dict, steps: int = 12, extra: str = "") -> Path:
    """An ablation file over the tiny base; `extra` is more Ablation arguments as source, e.g. "sweep=Sweep(...)"."""
    path.write_text(f"""from gptjax.config import load_experiment
from gptjax.ablate import Ablation, Sweep


def get_ablation():
    return Ablation(base=load_experiment({str(tiny_base_file(cache_dir, path.parent))!r}), variants={variants!r},
                    steps={steps}, {extra})
""")
    return path


def test_steps_match_the_budget_exactly(cache_dir, tmp_path):
    variants = {"base": {}, "local": {"model.attention": "local"}, "mqa": {"model.n_kv_head": 1},
                "batch8": {"train.batch_size": 8}}
    ablation = Ablation(base=config_lib.load_experiment(tiny_base_file(cache_dir, tmp_path)), variants=variants,
                        steps=40)
    base_model = ablation_lib.counted_model(ablation_lib.resolve(ablation.base, []), 65)
    assert ablation_lib.flops_per_token(base_model) == DENSE_FLOPS_PER_TOKEN
    expected = {
        "flops": {"base": 40, "local": round(40 * DENSE_FLOPS_PER_TOKEN / LOCAL_FLOPS_PER_TOKEN),  # 43.6 -> 44
                  "mqa": round(40 * DENSE_FLOPS_PER_TOKEN / MQA_FLOPS_PER_TOKEN), "batch8": 20},  # 42.4 -> 42
        "tokens": {"base": 40, "local": 40, "mqa": 40, "batch8": 20},
        "steps": {"base": 40, "local": 40, "mqa": 40, "batch8": 40},
    }
    assert expected["flops"]["local"] == 44 and expected["flops"]["mqa"] == 42
    for budget, steps in expected.items():
        plan = ablation_lib.plan_ablation(ablation, tmp_path / budget, seeds=2, budget=budget)
        assert {v: plan.runs_of(v)[0].cfg.train.steps for v in plan.variants} == steps
        assert plan.budget_amount == {"flops": 40 * 4 * 32 * DENSE_FLOPS_PER_TOKEN, "tokens": 40 * 4 * 32,
                                      "steps": 40}[budget]
        assert [(r.variant, r.seed, r.cfg.train.seed) for r in plan.runs] == [
            (v, s, s) for s in (0, 1) for v in variants]
        assert {r.workdir for r in plan.runs} == {tmp_path / budget / v / f"seed{s}" for v in variants for s in (0, 1)}
    assert [p.name for p in tmp_path.iterdir()] == ["tiny_base.json"]  # planning trains and writes nothing


@pytest.mark.parametrize("variants,budget,message", [
    ({"a": {}, "b": {"model.nrom": "rmsnorm"}}, "flops", "variant 'b': unknown config key 'model.nrom'"),
    ({"a": {}, "b": {"model.norm": "batchnorm"}}, "flops", "variant 'b': invalid config: model.norm='batchnorm'"),
    ({"a": {}, "b": {"model.n_layer": "two"}}, "flops", "variant 'b': config key 'model.n_layer' expects an integer"),
    ({"a": {}, "b": {"model.n_kv_head": 3}}, "flops", "model.n_head=2 must be divisible by model.n_kv_head=3"),
    ({"a": {}, "b": {"train.batch_size": 1000}}, "tokens", "variant 'b' cannot meet the tokens budget of 1536: it "
                                                           "allows 0.048 steps"),  # 1536 / (1000 * 32)
    ({"a": {}, "b": {"model.norm": "layernorm"}}, "flops", "variants 'a' and 'b' are the same config"),
    ({"a": {}, "b": {"train.seed": 3}}, "flops", "variant 'b' sets train.seed, which the ablation decides"),
    ({"a": {}, "b/c": {}}, "flops", "variant name 'b/c' must be"),
])
def test_bad_variants_fail_before_any_run(cache_dir, tmp_path, capsys, variants, budget, message):
    path = write_ablation_file(tmp_path / "bad.py", cache_dir, variants)
    root = tmp_path / "runs"
    assert main(["ablate", "--config", str(path), "--workdir", str(root), "--seeds", "2", "--budget", budget]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gptjax: error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not root.exists()  # the first, valid variant was not trained either


def test_report_without_a_finished_run_is_an_error(cache_dir, tmp_path, capsys):
    path = write_ablation_file(tmp_path / "abl.py", cache_dir, {"a": {}, "b": {"model.norm": "rmsnorm"}})
    assert main(["ablate", "--config", str(path), "--workdir", str(tmp_path / "runs"), "--report-only"]) == 2
    assert "gptjax: error: no finished run in" in capsys.readouterr().err


def test_printed_commands_rebuild_each_runs_config(cache_dir, tmp_path, capsys):
    variants = {"a": {}, "rms": {"model.norm": "rmsnorm", "model.use_bias": False},
                "local": {"model.attention": "local", "model.window": 4}}
    path = write_ablation_file(tmp_path / "abl.py", cache_dir, variants)
    root = tmp_path / "runs"
    assert main(["ablate", "--config", str(path), "--workdir", str(root), "--seeds", "2", "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    plan = ablation_lib.plan_ablation(ablation_lib.load_ablation(path), root, seeds=2)
    assert len(lines) == len(plan.runs) == 6
    for line, run in zip(lines, plan.runs):
        words = shlex.split(line)
        assert words[:2] == ["gptjax", "train"]
        rest, overrides = split_config_overrides(words[2:])
        assert rest == ["--config", str(root / ablation_lib.BASE_CONFIG_FILE), "--workdir", str(run.workdir)]
        cd = config_lib.load_experiment(rest[1])
        assert config_lib.to_config(config_lib.apply_overrides(cd, overrides)) == run.cfg
        saved = config_lib.load_experiment(run.workdir / ablation_lib.RUN_CONFIG_FILE)
        assert config_lib.to_config(saved) == run.cfg
    assert "--config.model.use_bias=false" in lines[1] and "--config.train.seed=1" in lines[4]
    assert not list(root.rglob("checkpoints"))


def _finished(root: Path) -> set[str]:
    return {f"{p.parent.parent.name}/{p.parent.name}" for p in root.glob("*/*/checkpoints")}


@pytest.fixture(scope="module")
def trained(cache_dir, tmp_path_factory):
    """A 2-variant x 2-seed ablation, interrupted after its second run and then finished by a rerun."""
    tmp = tmp_path_factory.mktemp("ablate")
    path = write_ablation_file(tmp / "abl.py", cache_dir, {"ln": {}, "rms": {"model.norm": "rmsnorm"}})
    root = tmp / "runs"
    plan = ablation_lib.plan_ablation(ablation_lib.load_ablation(path), root, seeds=2)
    from gptjax.train import loop

    calls = []
    real_train = loop.train

    def interrupted_at_third(cfg, workdir, **kwargs):
        calls.append(Path(workdir))
        if len(calls) == 3:
            raise RunInterrupted("stopped by SIGTERM")
        return real_train(cfg, workdir, **kwargs)

    loop.train = interrupted_at_third
    try:
        with pytest.raises(RunInterrupted):
            ablation_lib.execute(plan, show_progress=False)
    finally:
        loop.train = real_train
    first = _finished(root)
    assert first == {"ln/seed0", "rms/seed0"}
    kept = {name: dir_snapshot(root / name) for name in first}
    resumed = ablation_lib.execute(plan, show_progress=False)
    return {"path": path, "root": root, "plan": plan, "resumed": resumed, "kept": kept}


def test_rerun_trains_only_what_is_missing(trained):
    root, plan = trained["root"], trained["plan"]
    assert [(r.variant, r.seed) for r in trained["resumed"]] == [("ln", 1), ("rms", 1)]
    for name, snapshot in trained["kept"].items():
        assert dir_snapshot(root / name) == snapshot  # finished runs are never touched
    assert all(ablation_lib.latest_checkpoint_step(r.workdir) == 12 for r in plan.runs)
    gone = root / "rms" / "seed0"
    shutil.rmtree(gone)
    rest = {name: dir_snapshot(root / name) for name in ("ln/seed0", "ln/seed1", "rms/seed1")}
    assert [(r.variant, r.seed) for r in ablation_lib.execute(plan, show_progress=False)] == [("rms", 0)]
    assert rest == {name: dir_snapshot(root / name) for name in rest}
    assert ablation_lib.execute(plan, show_progress=False) == []


def test_runs_of_another_config_are_refused_before_training(trained, cache_dir, tmp_path):
    root = trained["root"]
    before = dir_snapshot(root)
    changed = write_ablation_file(tmp_path / "changed.py", cache_dir,
                                  {"ln": {"model.use_bias": False}, "rms": {"model.norm": "rmsnorm"}})
    plan = ablation_lib.plan_ablation(ablation_lib.load_ablation(changed), root, seeds=2)
    with pytest.raises(GptjaxError, match=r"ln/seed0 holds a checkpoint of another config than the ablation plans "
                                          r"\(model.use_bias: True -> False\)"):
        ablation_lib.execute(plan, show_progress=False)
    assert dir_snapshot(root) == before


def test_ablation_file_errors_name_the_line(tmp_path, capsys):
    path = tmp_path / "typo.py"
    path.write_text("from gptjax.config import base_config\n\n\ndef get_ablation():\n    c = base_config()\n"
                    "    c.model.nlayer = 3\n")
    assert main(["ablate", "--config", str(path), "--workdir", str(tmp_path / "runs")]) == 2
    assert f"gptjax: error: {path}:6: AttributeError: Key \"nlayer\" does not exist" in capsys.readouterr().err


def _final_val(workdir: Path, key: str) -> float:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r and r["step"] == 12][-1]


def test_report_holds_the_runs_numbers(trained, capsys):
    root, plan = trained["root"], trained["plan"]
    runs = {r.workdir: dir_snapshot(r.workdir) for r in plan.runs}
    command = ["ablate", "--config", str(trained["path"]), "--workdir", str(root), "--seeds", "2"]
    assert main(command) == 0  # all finished: trains nothing, reports
    assert runs == {workdir: dir_snapshot(workdir) for workdir in runs}
    out = capsys.readouterr().out
    assert main([*command, "--report-only"]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == out.splitlines()[-3:]
    for name in (report_lib.REPORT_MD, report_lib.REPORT_JSON, report_lib.PLOT_FILE):
        assert (root / name).stat().st_size > 0
    assert (root / report_lib.PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in table] == ["| variant", "| ln", "| rms"]
    assert table[1].split(" | ")[8] == "(reference)"
    assert table == [line for line in (root / report_lib.REPORT_MD).read_text().splitlines() if line.startswith("| ")]

    report = json.loads((root / report_lib.REPORT_JSON).read_text())
    assert report["runs_finished"] == report["runs_planned"] == 4
    ln, rms = report["variants"]
    losses = {v: [_final_val(r.workdir, "val_loss") for r in plan.runs_of(v)] for v in ("ln", "rms")}
    assert ln["metrics"]["val_loss"]["mean"] == pytest.approx(statistics.fmean(losses["ln"]), abs=1e-12)
    assert rms["metrics"]["val_loss"]["std"] == pytest.approx(statistics.stdev(losses["rms"]), abs=1e-12)
    assert rms["metrics"]["val_bpb"]["mean"] == pytest.approx(
        statistics.fmean(_final_val(r.workdir, "val_bpb") for r in plan.runs_of("rms")), abs=1e-12)
    from scipy import stats

    expected = stats.ttest_ind(losses["rms"], losses["ln"], equal_var=False)
    assert rms["vs_reference"]["val_loss"]["p"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert rms["vs_reference"]["val_loss"]["difference"] == pytest.approx(
        statistics.fmean(losses["rms"]) - statistics.fmean(losses["ln"]), abs=1e-12)
    assert ln["vs_reference"] is None

    from gptjax.checkpoint import restore_params
    from gptjax.model.transformer import count_params

    params, _, _ = restore_params(plan.runs_of("rms")[0].workdir)
    assert rms["params"] == count_params(params)
    assert rms["non_embedding_params"] == count_params(params) - 128 * 32 - 32 * 32  # tokens, positions
    assert ln["params"] - rms["params"] == 3 * 32  # layernorm's biases: two per layer, one final
    assert ln["flops_per_token"] == DENSE_FLOPS_PER_TOKEN and ln["steps"] == 12 and ln["tokens"] == 12 * 4 * 32
    curve = ln["curves"][0]["curve"]
    assert [step for step, _, _ in curve] == [6, 12] and 0 < curve[0][2] < curve[1][2]
    assert ln["tokens_per_s"] > 0


def test_welch_by_hand_and_against_scipy(monkeypatch):
    # a = (0, 2): mean 1, var/n = 1; b = (1, 5): mean 3, var/n = 4 -> t = 2/sqrt(5), df = 25/17
    result = report_lib.welch_test([0.0, 2.0], [1.0, 5.0])
    assert result.difference == 2.0 and result.t == pytest.approx(2 / math.sqrt(5), abs=1e-15)
    assert result.df == pytest.approx(25 / 17, abs=1e-15)
    from scipy import stats

    a, b = [2.41, 2.45, 2.43, 2.47], [2.38, 2.36, 2.40]
    expected = stats.ttest_ind(b, a, equal_var=False)
    with_scipy = report_lib.welch_test(a, b)
    assert with_scipy.t == pytest.approx(expected.statistic, rel=1e-12)
    assert with_scipy.p == pytest.approx(expected.pvalue, rel=1e-12)
    half = stats.t.ppf(0.975, with_scipy.df) * math.sqrt(statistics.variance(a) / 4 + statistics.variance(b) / 3)
    assert (with_scipy.low, with_scipy.high) == pytest.approx((with_scipy.difference - half,
                                                               with_scipy.difference + half), abs=1e-12)
    monkeypatch.setitem(__import__("sys").modules, "scipy", None)  # the fallback without scipy
    without = report_lib.welch_test(a, b)
    assert without.p == pytest.approx(expected.pvalue, rel=1e-9)
    assert without.high == pytest.approx(with_scipy.high, abs=1e-9)
    assert report_lib.welch_test([1.0], [1.0, 2.0]) is None


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_ablations_plan(cache_dir, tmp_path, path):
    plan = ablation_lib.plan_ablation(ablation_lib.load_ablation(path), tmp_path / path.stem, seeds=3)
    steps = {v: plan.runs_of(v)[0].cfg.train.steps for v in plan.variants}
    assert len(plan.runs) == 3 * sum(len(plan.values_of(v)) for v in plan.variants)
    assert all(len({r.cfg.train.steps for r in plan.runs_of(v)}) == 1 for v in plan.variants)
    # base FLOPs/token 6*344064 + 12*3*96*64 = 2285568; a 16-position context (local window 16, strided 8 + 64/8)
    # or 2 KV heads: 2119680 -> 600 * 2285568 / 2119680 = 646.96; 1 KV head: 2036736 -> 673.3
    expected = {"norm": {"layernorm": 600, "rmsnorm": 600},
                "positions": {p: 600 for p in config_lib.POSITIONS},
                "attention": {"dense": 600, "local": 647, "strided": 647},
                "mlp": {"gelu": 600, "swiglu": 600},
                "heads": {"mha": 600, "gqa": 647, "mqa": 673},
                # two of three layers local (L,G,L and L,L,G): 6*344064 + 12*96*(16+16+64) = 2174976 -> 630.5
                "attention_layers": {"global": 600, "LG": 631, "LLG": 631, "local": 647},
                "qk_norm": {"plain": 600, "qk_norm": 600, "plain_lr4e-2": 600, "qk_norm_lr4e-2": 600},
                # active FLOPs: the dense MLP + a 96 x 8 router per layer (+6*3*768 -> 596.4); 8x the MLP -> 118.5
                "moe": {"dense": 600, "moe_8x_top1": 596, "moe_8x_half_top2": 596,
                        "dense_equal_params": 118},
                # equal tokens, and every lr at the same steps
                "optimizers": {"adamw": 600, "muon": 600, "lion": 600, "adafactor": 600},
                "schedules": {"cosine": 600, "wsd": 600, "inverse_sqrt": 600}}[path.stem]
    assert steps == expected
    if path.stem == "mlp":
        counts = {v: report_lib.param_counts(plan.runs_of(v)[0]) for v in plan.variants}
        assert counts["gelu"] == counts["swiglu"]


SHAKESPEARE_LAMBADA = ["First Citizen: Before we proceed any further, hear me speak", "You are all resolved rather to "
                       "die than to famish", "Let us kill him, and we will have corn at our own price",
                       "We are accounted poor citizens, the patricians good", "What authority surfeits on would "
                       "relieve us", "Our sufferance is a gain to them. Let us revenge this with our pikes"]


def shakespeare_lambada(where: Path) -> Path:
    """A LAMBADA-format task of Shakespeare lines (the char tokenizer knows only Shakespeare's characters)."""
    (where / "lambada").mkdir(parents=True)
    lines = [json.dumps({"context": text.rsplit(" ", 1)[0], "continuation": " " + text.rsplit(" ", 1)[1]})
             for text in SHAKESPEARE_LAMBADA]
    (where / "lambada" / "lambada_openai.jsonl").write_text("\n".join(lines) + "\n")
    return where


def test_downstream_scores_reach_the_report(cache_dir, tmp_path, monkeypatch, capsys):
    base = config_lib.load_experiment(tiny_base_file(cache_dir, tmp_path))
    ablation = Ablation(base=base, variants={"ln": {}, "rms": {"model.norm": "rmsnorm"}}, eval_tasks=("lambada:8",))
    monkeypatch.delenv("GPTJAX_EVAL_DATA", raising=False)
    plan = ablation_lib.plan_ablation(ablation, tmp_path / "no_data", seeds=1)
    with pytest.raises(GptjaxError, match="train.eval_tasks needs the tasks' data"):
        ablation_lib.execute(plan, show_progress=False)
    assert not list((tmp_path / "no_data").rglob("checkpoints"))

    monkeypatch.setenv("GPTJAX_EVAL_DATA", str(shakespeare_lambada(tmp_path / "eval_data")))
    plan = ablation_lib.plan_ablation(ablation, tmp_path / "runs", seeds=1)
    assert all("train.eval_tasks=lambada:8" in run.overrides for run in plan.runs)
    ablation_lib.execute(plan, show_progress=False)
    report = report_lib.write_report(plan)
    for entry, run in zip(report["variants"], plan.runs):
        assert entry["metrics"]["lambada/acc"]["mean"] == _final_val(run.workdir, "lambada/acc")
        assert "lambada/acc_stderr" not in entry["metrics"]
    header = report_lib.markdown_table(report).splitlines()[0]
    assert header.endswith("| val bits/byte | lambada/acc | lambada/perplexity |")


# ---- sweeps: each variant at its best value, chosen on the first half of val, reported on the second -------------

LR_SWEEP = Sweep(key="train.lr", values=(1e-3, 3e-3), scaled={"train.min_lr": 0.1})


def test_sweep_plan_runs_overrides_and_layout(cache_dir, tmp_path):
    base = config_lib.load_experiment(tiny_base_file(cache_dir, tmp_path))
    ablation = Ablation(base=base, variants={"adamw": {}, "muon": {"train.optimizer": "muon"},
                                             "rms": {"model.norm": "rmsnorm"}},
                        sweep=LR_SWEEP, sweeps={"muon": Sweep("train.muon_lr", (0.01, 0.02, 0.04)), "rms": None})
    root = tmp_path / "runs"
    plan = ablation_lib.plan_ablation(ablation, root, seeds=2)
    assert plan.tuned and set(plan.sweeps) == {"adamw", "muon"}
    assert len(plan.runs) == 2 * (2 + 3 + 1)
    assert [(r.variant, r.swept_value, r.seed) for r in plan.runs[:6]] == [
        ("adamw", 1e-3, 0), ("adamw", 3e-3, 0), ("muon", 0.01, 0), ("muon", 0.02, 0), ("muon", 0.04, 0),
        ("rms", None, 0)]
    adamw = plan.runs_at("adamw", 3e-3)[1]
    assert adamw.workdir == root / "adamw" / "train.lr=0.003" / "seed1"
    assert adamw.overrides == ("train.lr=0.003", "train.min_lr=0.0003", "train.steps=12", "train.seed=1")
    assert (adamw.cfg.train.lr, adamw.cfg.train.min_lr) == (3e-3, 3e-4)
    muon = plan.runs_at("muon", 0.04)[0]
    assert muon.workdir == root / "muon" / "train.muon_lr=0.04" / "seed0"
    assert (muon.cfg.train.optimizer, muon.cfg.train.muon_lr, muon.cfg.train.lr) == ("muon", 0.04, base.train.lr)
    assert plan.runs_at("rms", None)[0].workdir == root / "rms" / "seed0"  # an unswept variant keeps the old layout
    assert not root.exists()


def test_shipped_optimizers_sweep_each_optimizers_own_key(cache_dir, tmp_path):
    plan = ablation_lib.plan_ablation(ablation_lib.load_ablation(REPO / "experiments/ablations/optimizers.py"),
                                      tmp_path, seeds=1)
    keys = {v: plan.sweeps[v].key for v in plan.variants}
    assert keys == {"adamw": "train.lr", "muon": "train.muon_lr", "lion": "train.lr", "adafactor": "train.lr"}
    assert 4 * max(plan.sweeps["lion"].values) <= max(plan.sweeps["adamw"].values)
    assert {r.cfg.train.optimizer for r in plan.runs_of("adafactor")} == {"adafactor"}


@pytest.mark.parametrize("extra,message", [
    ("sweep=Sweep('train.lrr', (1e-3,))", "variant 'a' at train.lrr=0.001: unknown config key 'train.lrr'"),
    ("sweep=Sweep('train.lr', ())", "variant 'a''s sweep of train.lr has no values"),
    ("sweep=Sweep('train.lr', (1e-3, -1.0))", "variant 'a' at train.lr=-1.0: invalid config: train.lr=-1.0 must be "
                                              "> 0"),
    ("sweep=Sweep('train.lr', ('big',))", "variant 'a''s sweep of train.lr: its values must be numbers, got 'big'"),
    ("sweep=Sweep('train.lr', (1e-3, 1e-3))", "variant 'a''s sweep of train.lr lists a value twice"),
    ("sweep=Sweep('train.steps', (10, 20))", "sweep of train.steps sets train.steps, which the ablation decides"),
    ("sweeps={'b': Sweep('train.warmup_steps', (1, 2))}", "variant 'b' sets train.warmup_steps, which its sweep "
                                                          "decides"),
    ("sweeps={'c': Sweep('train.lr', (1e-3,))}", "Ablation.sweeps names 'c', which is not one of the variants"),
    ("sweep=Sweep('train.lr', (1e-3, 3e-3), {'train.min_lr': 2.0})", "variant 'a' at train.lr=0.001: invalid config: "
                                                                     "train.min_lr=0.002 must be <= train.lr=0.001"),
])
def test_bad_sweeps_fail_before_any_run(cache_dir, tmp_path, capsys, extra, message):
    path = write_ablation_file(tmp_path / "bad.py", cache_dir, {"a": {}, "b": {"train.warmup_steps": 3}}, extra=extra)
    root = tmp_path / "runs"
    assert main(["ablate", "--config", str(path), "--workdir", str(root), "--seeds", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gptjax: error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not root.exists()


def test_printed_commands_of_a_sweep_rebuild_each_runs_config(cache_dir, tmp_path, capsys):
    path = write_ablation_file(tmp_path / "abl.py", cache_dir, {"a": {}, "rms": {"model.norm": "rmsnorm"}},
                               extra="sweep=Sweep('train.lr', (1e-3, 3e-3), {'train.min_lr': 0.1}), sweeps={'a': None}")
    root = tmp_path / "runs"
    assert main(["ablate", "--config", str(path), "--workdir", str(root), "--seeds", "1", "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    plan = ablation_lib.plan_ablation(ablation_lib.load_ablation(path), root, seeds=1)
    assert [str(r.workdir.relative_to(root)) for r in plan.runs] == ["a/seed0", "rms/train.lr=0.001/seed0",
                                                                      "rms/train.lr=0.003/seed0"]
    for line, run in zip(lines, plan.runs, strict=True):
        rest, overrides = split_config_overrides(shlex.split(line)[2:])
        cd = config_lib.apply_overrides(config_lib.load_experiment(rest[1]), overrides)
        assert rest[3] == str(run.workdir) and config_lib.to_config(cd) == run.cfg
    assert "--config.train.lr=0.003 --config.train.min_lr=0.0003" in lines[2]
    assert json.loads((root / ablation_lib.PLAN_FILE).read_text())["sweeps"]["rms"]["values"] == [1e-3, 3e-3]


def _scores(select: float, report: float) -> dict:
    return {heldout.SELECT: {"loss": select, "bpb": select / math.log(2)},
            heldout.REPORT: {"loss": report, "bpb": report / math.log(2)}}


def test_choose_uses_the_select_half_and_skips_diverged_values():
    points = [heldout.sweep_point(1e-3, [_scores(2.30, 2.10), _scores(2.32, 2.12)]),  # best on report, not select
              heldout.sweep_point(3e-3, [_scores(2.20, 2.25), _scores(2.22, 2.27)]),
              heldout.sweep_point(1e-2, [_scores(float("nan"), 9.0), _scores(1.0, 1.0)])]  # a seed diverged
    assert points[0].select_loss == pytest.approx(2.31) and points[2].select_loss is None
    assert heldout.choose(points).value == 3e-3
    assert heldout.choose(points[2:]) is None
    assert heldout.val_halves(111540) == {heldout.SELECT: heldout.TokenRange(0, 55770),
                                          heldout.REPORT: heldout.TokenRange(55770, 111540)}
    assert heldout.val_halves(111540, 4096)[heldout.REPORT] == heldout.TokenRange(55770, 59866)


def test_report_of_hand_written_runs_picks_each_variants_best_value(cache_dir, tmp_path, monkeypatch):
    """metrics.jsonl and heldout.json written by hand: the report chooses on the select half and compares the
    chosen runs' report-half losses."""
    base = config_lib.load_experiment(tiny_base_file(cache_dir, tmp_path))
    ablation = Ablation(base=base, variants={"a": {}, "b": {"model.norm": "rmsnorm"}}, sweep=LR_SWEEP,
                        heldout_tokens=1000)
    plan = ablation_lib.plan_ablation(ablation, tmp_path / "runs", seeds=2)
    # (variant, lr) -> per-seed (select, report): a is best at 1e-3, b at 3e-3; the report halves disagree
    planted = {("a", 1e-3): [(2.0, 2.5), (2.1, 2.6)], ("a", 3e-3): [(2.2, 2.0), (2.3, 2.1)],
               ("b", 1e-3): [(2.4, 2.2), (2.5, 2.3)], ("b", 3e-3): [(1.9, 2.3), (1.8, 2.4)]}
    halves = {name: dataclasses.asdict(r)
              for name, r in heldout.val_halves(heldout.split_size(plan.base), 1000).items()}
    for run in plan.runs:
        select, report = planted[run.variant, run.swept_value][run.seed]
        run.workdir.mkdir(parents=True)
        (run.workdir / "metrics.jsonl").write_text(json.dumps({"step": 12, "val_loss": 3.0, "val_bpb": 4.0,
                                                               "wall_s": 1.0}) + "\n")
        (run.workdir / heldout.HELDOUT_FILE).write_text(json.dumps(
            {"step": 12, "ranges": halves, "scores": _scores(select, report)}))
    monkeypatch.setattr(report_lib, "is_finished", lambda run: True)
    report = report_lib.write_report(plan)
    a, b = report["variants"]
    assert (a["chosen_value"], b["chosen_value"]) == (1e-3, 3e-3)
    assert a["select_loss"] == pytest.approx(2.05) and b["select_loss"] == pytest.approx(1.85)
    assert (a["metrics"]["val_loss"]["mean"], b["metrics"]["val_loss"]["mean"]) == pytest.approx((2.55, 2.35))
    assert b["vs_reference"]["val_loss"]["difference"] == pytest.approx(-0.2)
    assert a["seeds_planned"] == 2 and a["seeds_finished"] == [0, 1]
    assert report["selection"]["select"] == "val tokens [0, 1000)"
    assert report["selection"]["report"].startswith(f"val tokens [{halves['report']['start']}, ")
    md = (plan.root / report_lib.REPORT_MD).read_text()
    assert "| a | train.lr | 0.001 | 2.0500 |" in md and "| b | train.lr | 0.003 | 1.8500 |" in md
    assert "**0.003: 1.8500 (2.3500)**" in md and "select half: val tokens [0, 1000)" in md
    assert json.loads((plan.root / report_lib.REPORT_JSON).read_text())["selection"]["sweeps"][1]["chosen"] == 3e-3


def test_a_real_sweep_end_to_end(cache_dir, tmp_path, capsys):
    """2 lrs x 1 seed of the tiny base: trained, scored on both val halves (the select half exactly as `gptjax
    eval`'s perplexity over those tokens), the better lr chosen, and a report-only rerun reusing the scores."""
    path = write_ablation_file(tmp_path / "abl.py", cache_dir, {"adamw": {}},
                               extra="sweep=Sweep('train.lr', (1e-4, 1e-2), {'train.min_lr': 0.1}), "
                                     "heldout_tokens=2048")
    root = tmp_path / "runs"
    assert main(["ablate", "--config", str(path), "--workdir", str(root), "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    report = json.loads((root / report_lib.REPORT_JSON).read_text())
    sweep = report["selection"]["sweeps"][0]
    by_value = {p["value"]: p for p in sweep["points"]}
    assert sweep["chosen"] == min(by_value, key=lambda v: by_value[v]["select_loss"]) == 1e-2
    assert "| adamw | train.lr | 0.01 |" in out

    import gptjax
    from gptjax.eval.perplexity import evaluate_split
    from gptjax.prepare.resolve import open_data

    workdir = root / "adamw" / "train.lr=0.0001" / "seed0"
    lm = gptjax.load(workdir)
    exact = evaluate_split(lm, open_data(lm.cfg)[0], "val", 16, max_tokens=2047)  # the windows of tokens [0, 2048)
    assert by_value[1e-4]["select_loss"] == pytest.approx(exact["loss"], rel=1e-5)
    assert report["variants"][0]["metrics"]["val_loss"]["mean"] == by_value[1e-2]["report_loss"]
    assert (root / report_lib.PLOT_FILE).read_bytes()[:4] == b"\x89PNG"

    saved = dir_snapshot(root / "adamw")
    assert main(["ablate", "--config", str(path), "--workdir", str(root), "--seeds", "1", "--report-only"]) == 0
    assert dir_snapshot(root / "adamw") == saved  # held-out scores reused, nothing retrained
