"""Per-domain validation of a `data.mixture` (training loop and `gptjax eval`) and staged mixture weights
(`data.mixture_stages`): rows per stage, the field's checks and resume policy, exact resume across a stage boundary."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, same_params, tiny_config

from gptjax.config import MixtureStage, check_trained_mixture, mixture_names, mixture_schedule, validate
from gptjax.data import loader
from gptjax.errors import GptjaxError

BOUNDARY = 6  # the step the staged test runs switch weights at


# ---- rows per stage (pure) ---------------------------------------------------------------------------------------


def test_each_stage_draws_its_weights_and_every_component_stream_continues():
    schedule = (MixtureStage(0, (0.5, 0.5)), MixtureStage(10, (0.2, 0.8)), MixtureStage(20, (0.0, 1.0)))
    rows = [loader.mixture_rows(step, 10, schedule, seed=3) for step in range(30)]
    counts = [np.bincount(np.concatenate([c for c, _ in rows[a:b]]), minlength=2).tolist()
              for a, b in ((0, 10), (10, 20), (20, 30))]
    assert counts == [[50, 50], [20, 80], [0, 100]]
    for component in (0, 1):  # each component's rows are the next of its own stream: none skipped, none repeated
        taken = np.concatenate([i[c == component] for c, i in rows])
        assert sorted(taken.tolist()) == list(range(len(taken)))


def test_one_stage_is_todays_mixture():
    single = (MixtureStage(0, (0.7, 0.3)),)
    staged_later = (*single, MixtureStage(50, (0.1, 0.9)))
    for step in (0, 7, 49):
        for a, b in zip(loader.mixture_rows(step, 12, single, 0), loader.mixture_rows(step, 12, staged_later, 0)):
            np.testing.assert_array_equal(a, b)


# ---- the field's checks and resume policy -------------------------------------------------------------------------

MIXTURE = ("/data/web:0.7", "gs://bucket/code/:0.3")


def test_components_are_named_by_their_directories():
    assert mixture_names(MIXTURE) == ["web", "code"]
    assert mixture_names(("/x/a/out:1", "/x/b/out:1")) == ["a/out", "b/out"]
    assert mixture_schedule(MIXTURE, ("100:code=1", "200:web=0.5,code=0.5")) == (
        MixtureStage(0, (0.7, 0.3)), MixtureStage(100, (0.0, 1.0)), MixtureStage(200, (0.5, 0.5)))


def test_a_command_line_override_gives_the_same_stages():
    from gptjax.config import apply_overrides, base_config, to_config

    cd = apply_overrides(base_config(), [f"data.mixture={','.join(MIXTURE)}",
                                         "data.mixture_stages=100:web=0.2,code=0.8,200:code=1"])
    data = to_config(cd).data
    assert mixture_schedule(data.mixture, data.mixture_stages) == mixture_schedule(
        MIXTURE, ("100:web=0.2,code=0.8", "200:code=1"))


@pytest.mark.parametrize("stages,message", [
    (("100:web=1", "50:code=1"), "must be above 0 .* and increase; got step 50 after step 100"),
    (("0:web=1",), "must be above 0"),
    (("100:wiki=1",), "'wiki' is not a data.mixture component; they are web, code"),
    (("100:web=-1",), "the weight of web must be a number >= 0"),
    (("100:web=0,code=0",), "the weights are all 0"),
    (("web=1",), "must be STEP:NAME=WEIGHT"),
])
def test_bad_stages_are_one_clear_error(cache_dir, stages, message):
    cfg = tiny_config(cache_dir)
    cfg = replace(cfg, data=replace(cfg.data, dataset="", mixture=MIXTURE, mixture_stages=stages))
    with pytest.raises(GptjaxError, match=message) as error:
        validate(cfg)
    assert "\n" not in str(error.value)


def test_stages_need_a_mixture(cache_dir):
    cfg = tiny_config(cache_dir)
    with pytest.raises(GptjaxError, match="data.mixture_stages needs data.mixture"):
        validate(replace(cfg, data=replace(cfg.data, mixture_stages=("10:web=1",))))


def test_a_resume_may_change_later_stages_but_not_trained_ones(cache_dir):
    data = replace(tiny_config(cache_dir).data, mixture=MIXTURE, mixture_stages=("100:code=1",))
    saved = {"mixture": list(MIXTURE), "mixture_stages": ["100:code=1"]}
    check_trained_mixture(saved, replace(data, mixture_stages=("150:code=1",)), step=100)  # step 100 is untrained
    check_trained_mixture(saved, replace(data, mixture_stages=("100:code=1", "120:web=1")), step=110)
    with pytest.raises(GptjaxError, match="steps before 120"):
        check_trained_mixture(saved, replace(data, mixture_stages=("110:code=1",)), step=120)
    with pytest.raises(GptjaxError, match="steps before 120"):
        check_trained_mixture(saved, replace(data, mixture_stages=()), step=120)


# ---- training: per-domain val, exact resume across a stage boundary, `gptjax eval` --------------------------------


@pytest.fixture(scope="module")
def web_and_code(tmp_path_factory) -> tuple[Path, Path]:
    """Two small char datasets with one tokenizer, named web and code (code's text is part of web's, so web's char
    vocabulary covers it)."""
    from gptjax.cli import main as cli_main

    root = tmp_path_factory.mktemp("staged")
    text = (REPO / "gptjax" / "data" / "bundled" / "tinyshakespeare.txt").read_text()
    paragraphs = [p for p in text.split("\n\n") if len(p) > 200]
    for name, part in (("web", paragraphs[:300]), ("code", paragraphs[200:300])):
        (root / f"docs_{name}").mkdir()
        for i, para in enumerate(part):
            (root / f"docs_{name}" / f"{i:03d}.txt").write_text(para)
    common = ["--raw", "--tokenizer", "char", "--quiet", "--workers", "1"]
    assert cli_main(["prepare", "--input", str(root / "docs_web"), "--out", str(root / "web"), *common]) == 0
    assert cli_main(["prepare", "--input", str(root / "docs_code"), "--out", str(root / "code"), *common,
                     "--tokenizer-dir", str(root / "web" / "tokenizer")]) == 0
    return root / "web", root / "code"


def staged_config(cache_dir: Path, data_dirs: tuple[Path, Path], steps: int, stages: tuple[str, ...]):
    cfg = tiny_config(cache_dir, train={"steps": steps, "schedule_steps": 10, "eval_every": 5, "eval_batches": 2})
    web, code = data_dirs
    return replace(cfg, data=replace(cfg.data, dataset="", mixture=(f"{web}:0.75", f"{code}:0.25"),
                                     mixture_stages=stages))


def metric_lines(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def last_by_step(workdir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in metric_lines(workdir) if key in r}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, cache_dir, web_and_code) -> Path:
    from gptjax.train.loop import train

    workdir = tmp_path_factory.mktemp("straight") / "run"
    train(staged_config(cache_dir, web_and_code, 10, (f"{BOUNDARY}:web=0.25,code=0.75",)), workdir,
          show_progress=False)
    return workdir


def test_val_loss_and_bpb_are_reported_per_component(straight_run, web_and_code):
    from gptjax.eval.perplexity import bytes_per_token

    evals = [r for r in metric_lines(straight_run) if "val_loss" in r]
    final = evals[-1]
    assert final["step"] == 10
    for name, path in zip(("web", "code"), web_and_code):
        loss, bpb = final[f"val_loss/{name}"], final[f"val_bpb/{name}"]
        assert np.isfinite(loss) and final[f"val_ppl/{name}"] == pytest.approx(np.exp(loss))
        assert bpb == pytest.approx(loss / np.log(2) / bytes_per_token(path, "val"))
    assert {"val_loss", "val_ppl", "val_bpb"} <= final.keys()
    # the overall bpb divides by the bytes per token of the rows it scored: 3 of every 4 from web (weight 0.75)
    web, code = (bytes_per_token(path, "val") for path in web_and_code)
    assert web != code
    assert final["val_bpb"] == pytest.approx(final["val_loss"] / np.log(2) / (0.75 * web + 0.25 * code), rel=1e-9)


def test_resume_across_a_stage_boundary_is_bit_identical(straight_run, tmp_path, cache_dir, web_and_code):
    import gptjax
    from gptjax.train.loop import train

    stages = (f"{BOUNDARY}:web=0.25,code=0.75",)
    resumed = tmp_path / "resumed"
    train(staged_config(cache_dir, web_and_code, BOUNDARY - 2, stages), resumed, show_progress=False)
    with pytest.raises(GptjaxError, match=f"steps before {BOUNDARY - 2}"):  # the past may not change
        train(staged_config(cache_dir, web_and_code, 10, ("2:web=0.25,code=0.75",)), resumed, show_progress=False)
    train(staged_config(cache_dir, web_and_code, 10, stages), resumed, show_progress=False)
    assert last_by_step(resumed, "loss") == last_by_step(straight_run, "loss")
    assert last_by_step(resumed, "val_loss/code")[10] == last_by_step(straight_run, "val_loss/code")[10]
    same_params(gptjax.load(resumed), gptjax.load(straight_run))


def test_gptjax_eval_reports_each_component(straight_run, capsys):
    from gptjax.cli import main as cli_main

    assert cli_main(["eval", "--workdir", str(straight_run), "--max-tokens", "400"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"loss", "ppl", "bpb", "loss/web", "bpb/web", "loss/code", "bpb/code", "tokens/code"} <= result.keys()
    assert result["tokens/web"] == result["tokens"]  # the recorded data dir is the first component, web


def test_the_loader_switches_weights_at_the_stage_step(web_and_code, cache_dir):
    data = staged_config(cache_dir, web_and_code, 10, (f"{BOUNDARY}:web=0.25,code=0.75",)).data
    staged = loader.train_iterator(web_and_code[0], 16, 8, seed=0, n_steps=10, data=data)
    unstaged = loader.train_iterator(web_and_code[0], 16, 8, seed=0, n_steps=10, data=replace(data, mixture_stages=()))
    same = [np.array_equal(a, b) for a, b in zip(staged, unstaged)]
    assert same == [True] * BOUNDARY + [False] * (10 - BOUNDARY)
