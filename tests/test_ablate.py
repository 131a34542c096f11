"""`gptjax ablate`: budget matching, checks before any run, resume, the report's statistics and files, and the
printed commands."""
from __future__ import annotations

import json
import math
import shlex
import shutil
import statistics
from pathlib import Path

import pytest
from conftest import REPO, dir_snapshot, tiny_config

from gptjax import config as config_lib
from gptjax.ablate import report as report_lib
from gptjax.ablate import runner as ablation_lib
from gptjax.ablate.runner import Ablation
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


def write_ablation_file(path: Path, cache_dir: Path, variants: dict, steps: int = 12) -> Path:
    path.write_text(f"""from gptjax.config import load_experiment
from gptjax.ablate import Ablation


def get_ablation():
    return Ablation(base=load_experiment({str(tiny_base_file(cache_dir, path.parent))!r}), variants={variants!r},
                    steps={steps})
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
    assert len(plan.runs) == 3 * len(plan.variants)
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
                        "dense_equal_params": 118}}[path.stem]
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
