"""Bad input: one clear error line, a non-zero exit, nothing in the workdir destroyed."""
from __future__ import annotations

import json

import pytest
from conftest import dir_snapshot, run_cli, tiny_overrides

from gptjax.cli import main

CONFIG = "experiments/shakespeare_char_cpu.py"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gptjax: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("content,expected", [
    (None, "does not exist"), (b"", "empty_file"), (b"  \n\n", "empty_document"),
    (b"\x00\x01\x02binary\xff\xfe" * 200, "binary_file"),
])
def test_prepare_rejects_input_with_nothing_to_prepare(tmp_path, capsys, content, expected):
    src = tmp_path / "in.txt"
    if content is not None:
        src.write_bytes(content)
    out = tmp_path / "out"
    assert main(["prepare", "--input", str(src), "--out", str(out), "--quiet"]) == 2
    assert expected in one_error_line(capsys)
    assert not out.exists()


def test_prepare_repairs_invalid_utf8_and_reports_it(tmp_path, capsys):
    src = tmp_path / "latin1.txt"
    src.write_bytes("caf\u00e9 au lait, na\u00efve r\u00e9sum\u00e9 of a small test corpus\n".encode("latin-1") * 20)
    out = tmp_path / "out"
    assert main(["prepare", "--input", str(src), "--out", str(out), "--raw", "--quiet"]) == 0
    assert src.read_bytes().startswith(b"caf\xe9")  # the source is never modified
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["read"]["notes"]["invalid_utf8_bytes"] == 80  # four Latin-1 letters per line


def test_prepare_never_overwrites_prepared_data(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hello world, hello gptjax\n" * 50)
    out = tmp_path / "out"
    assert main(["prepare", "--input", str(src), "--out", str(out), "--raw", "--quiet"]) == 0
    before = dir_snapshot(out)
    capsys.readouterr()
    assert main(["prepare", "--input", str(src), "--out", str(out), "--raw", "--quiet"]) == 2
    assert "already holds prepared data" in one_error_line(capsys)
    assert dir_snapshot(out) == before


@pytest.mark.parametrize("override,expected", [
    ("--config.model.n_layr=3", "unknown config key 'model.n_layr'"),
    ("--config.train.lr=fast", "expects a number"),
    ("--config.model.position=spiral", "model.position='spiral'"),
    ("--config.model.max_positions=8", "above the position limit 8"),
    ("--config.model.n_head=5", "divisible"),
    ("--config.train.beta1=1.0", "train.beta1=1.0 must be in [0, 1)"),
    ("--config.train.eval_batches=0", "train.eval_batches=0 must be >= 1"),
    ("--config.train.spike_factor=0.5", "train.spike_factor=0.5 must be 0 or > 1"),
    ("--config.train.lr=nan", "train.lr=nan must be > 0"),
    ("--config.train.objective=ppo", "train.objective='ppo' is not one of lm, classify, sft, dpo"),
    ("--config.train.objective=dpo", "train.objective='dpo' finetunes a trained model: set train.init_from="),
    ("--config.train.seed=-1", "train.seed=-1 must be in [0, 4294967295]"),
    ("--config.train.eval_tasks=hellaswg", "unknown task 'hellaswg'; known tasks: hellaswag, mmlu"),
    ("--config.train.eval_tasks=lambada:0", "LIMIT must be a positive integer"),
    ("--config.data.prepare.num_perm=-3", "data.prepare.num_perm=-3 must be >= 1"),
])
def test_bad_config_is_one_line_and_workdir_untouched(tmp_path, capsys, cache_dir, override, expected):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me")
    before = dir_snapshot(workdir)
    assert main(["train", "--config", CONFIG, "--workdir", str(workdir), *tiny_overrides(), override]) == 2
    assert expected in one_error_line(capsys)
    assert dir_snapshot(workdir) == before


def test_unknown_key_in_an_experiment_file(tmp_path, capsys):
    exp = tmp_path / "exp.py"
    exp.write_text("from gptjax.config import base_config\n"
                   "def get_config():\n    c = base_config()\n    c.model.n_layers = 3\n    return c\n")
    assert main(["train", "--config", str(exp), "--workdir", str(tmp_path / "w")]) == 2
    assert "n_layers" in one_error_line(capsys)


@pytest.mark.parametrize("source,where", [
    ("from gptjax.config import base_config\ndef get_config():\n    c = base_config(\n    return c\n",
     ":3: SyntaxError"),
    ("from gptjax.config import base_config\ndef get_config():\n    return base_config(layers)\n", ":3: NameError"),
])
def test_broken_experiment_file_is_one_line_naming_file_and_line(tmp_path, capsys, source, where):
    exp = tmp_path / "exp.py"
    exp.write_text(source)
    assert main(["train", "--config", str(exp), "--workdir", str(tmp_path / "w")]) == 2
    assert f"{exp}{where}" in one_error_line(capsys)
    assert not (tmp_path / "w").exists()


def test_corrupt_saved_config_is_one_line(tmp_path, capsys):
    saved = tmp_path / "config.json"
    saved.write_text('{"train": {"lr": ')
    assert main(["train", "--config", str(saved), "--workdir", str(tmp_path / "w")]) == 2
    assert f"saved config {saved} is corrupt" in one_error_line(capsys)


def test_a_run_reruns_from_its_saved_config(tmp_path, cache_dir):
    first, second = tmp_path / "first", tmp_path / "second"
    trained = run_cli(["train", "--config", CONFIG, "--workdir", str(first), *tiny_overrides(steps=2)])
    assert trained.returncode == 0, trained.stderr[-2000:]
    rerun = run_cli(["train", "--config", str(first / "config.json"), "--workdir", str(second)])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads((second / "config.json").read_text()) == json.loads((first / "config.json").read_text())
    assert json.loads(rerun.stdout.splitlines()[-1])["loss"] == json.loads(trained.stdout.splitlines()[-1])["loss"]


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    first = run_cli(["train", "--config", CONFIG, "--workdir", str(workdir), *tiny_overrides(steps=3)])
    assert first.returncode == 0, first.stderr[-2000:]
    before = dir_snapshot(workdir)
    second = run_cli(["train", "--config", CONFIG, "--workdir", str(workdir), *tiny_overrides(steps=6),
                      "--config.model.d_model=64"])
    assert second.returncode == 2
    lines = [line for line in second.stderr.splitlines() if line.startswith("gptjax: error:")]
    assert len(lines) == 1 and "incompatible config (model.d_model: 32 -> 64)" in lines[0]
    assert dir_snapshot(workdir) == before


def test_generate_from_an_empty_workdir_errors(tmp_path, capsys):
    assert main(["generate", "--workdir", str(tmp_path), "--prompt", "hi"]) == 2
    assert "neither a training workdir" in one_error_line(capsys)


# ---- data that does not belong to the model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """A char-level corpus over other characters than Shakespeare's (another tokenizer fingerprint)."""
    from gptjax.prepare.resolve import prepare

    root = tmp_path_factory.mktemp("other")
    (root / "text.txt").write_text("0123456789 abc\n" * 400)
    prepare([str(root / "text.txt")], root / "data", tokenizer="char")
    return root / "data"


def tiny_lm(vocab_size: int, tokenizer):
    import flax.linen as nn
    from conftest import tiny_model

    from gptjax.api import LM
    from gptjax.config import Config
    from gptjax.model.transformer import Transformer, init_params

    cfg = Config(model=tiny_model(vocab_size=vocab_size))
    return LM(cfg, nn.unbox(init_params(Transformer(cfg.model), 0, 8)), tokenizer)


def test_eval_refuses_data_prepared_with_another_tokenizer(shakespeare_dir, other_data):
    from gptjax.data import tokenizer as tokenizers
    from gptjax.errors import GptjaxError
    from gptjax.eval.perplexity import evaluate_split

    lm = tiny_lm(66, tokenizers.load(shakespeare_dir / "tokenizer"))
    with pytest.raises(GptjaxError, match="prepared with another tokenizer .* prepare it with the model's tokenizer"):
        evaluate_split(lm, other_data, "val", 4)
    assert evaluate_split(lm, shakespeare_dir, "val", 4, max_tokens=200)["tokens"] == 192


def test_eval_refuses_token_ids_outside_the_models_vocabulary(shakespeare_dir):
    from gptjax.errors import GptjaxError
    from gptjax.eval.perplexity import evaluate_split

    lm = tiny_lm(20, None)  # a weights-only model: no fingerprint to compare, so the ids themselves are checked
    with pytest.raises(GptjaxError,
                       match=r"holds token id \d+ at position \d+, outside the model's vocabulary \[0, 20\)"):
        evaluate_split(lm, shakespeare_dir, "val", 4)


def test_training_refuses_a_data_dir_whose_tokenizer_does_not_match_its_manifest(tmp_path, shakespeare_dir,
                                                                                  other_data, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shakespeare_dir, data)
    shutil.rmtree(data / "tokenizer")
    shutil.copytree(other_data / "tokenizer", data / "tokenizer")
    code = main(["train", "--config", "experiments/shakespeare_char_cpu.py", "--workdir", str(tmp_path / "run"),
                 *tiny_overrides(steps=2), "--config.data.dataset=", f"--config.data.path={data}"])
    assert code == 2
    assert "does not match the tokenizer its manifest.json was prepared with" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()
