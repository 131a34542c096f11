"""The inference API refuses bad input with one clear error: token ids outside the vocabulary, sampling arguments
outside their range, generation past the trained length (unless allowed), text methods on a model without a
tokenizer; `gptjax generate --escapes` keeps non-ASCII text."""
from __future__ import annotations

import string
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import REPO, tiny_model
from test_generate import make

import gptjax
from gptjax import api, cli
from gptjax.api import LM
from gptjax.cli.generate import interpret_escapes
from gptjax.config import Config
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError

VOCAB = 66  # tiny_model's; its embedding table is padded to 128 rows
CHARS = ("\n\t éü日本語" + string.ascii_letters + string.digits + ".,:;!?'-()")[: VOCAB - 1]


def char_tokenizer() -> tokenizers.CharTokenizer:
    assert len(CHARS) == VOCAB - 1
    return tokenizers.CharTokenizer(CHARS)


def tiny_lm(tokenizer: tokenizers.Tokenizer | None = None, **model) -> LM:
    cfg = tiny_model(**model)
    _, params = make(cfg)
    return LM(Config(name="inputs-test", model=cfg), params, tokenizer)


@pytest.fixture(scope="module")
def lm() -> LM:
    return tiny_lm(char_tokenizer(), position="rope")


def one_error_line(capsys) -> str:
    """The single stderr line of a refused command, which printed nothing to stdout."""
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("gptjax: error: "), (out, err)
    return err


def cli_generate(monkeypatch, lm_to_load: LM, *args: str) -> int:
    monkeypatch.setattr(api, "load", lambda path, step=None: lm_to_load)
    return cli.main(["generate", "--workdir", "unused", *args])


# token ids

@pytest.mark.parametrize("bad_id", [VOCAB, 127, -1])
def test_logits_refuses_ids_outside_the_real_vocabulary(lm, bad_id):
    with pytest.raises(GptjaxError) as e:
        lm.logits([[1, 2, 3], [4, bad_id, 5]])
    message = str(e.value)
    assert f"token id {bad_id} at position 1 of sequence 1" in message and f"[0, {VOCAB})" in message


def test_token_logprobs_checks_the_last_token_too(lm):
    with pytest.raises(GptjaxError, match=f"token id {VOCAB} at position 3 of sequence 0"):
        lm.token_logprobs([[1, 2, 3, VOCAB]])


def test_generate_ids_refuses_a_bad_prompt_id(lm):
    with pytest.raises(GptjaxError, match=r"token id -5 at position 2 of sequence 0 .*\[0, 66\)"):
        lm.generate_ids([[1, 2, -5]], max_new_tokens=3)


def test_score_refuses_a_tokenizer_bigger_than_the_model():
    wide = tokenizers.CharTokenizer(CHARS + "xyzw")  # ids up to 68 for a 66-token model
    with pytest.raises(GptjaxError, match=f"outside the model's vocabulary \\[0, {VOCAB}\\)"):
        tiny_lm(wide).score(["w"])


def test_valid_ids_still_work(lm):
    logits = lm.logits([[0, VOCAB - 1]])
    assert logits.shape == (1, 2, VOCAB) and np.isfinite(logits).all()
    (logprobs,) = lm.token_logprobs([[0, 5, VOCAB - 1]])
    assert logprobs.shape == (2,) and (logprobs < 0).all()


# sampling arguments

@pytest.mark.parametrize("kwargs,expected", [
    (dict(temperature=-0.5), "temperature=-0.5 must be >= 0"),
    (dict(temperature=float("nan")), "temperature=nan must be >= 0"),
    (dict(top_p=0.0), "top_p=0.0 must be in (0, 1]"),
    (dict(top_p=1.5), "top_p=1.5 must be in (0, 1]"),
    (dict(top_k=-1), "top_k=-1 must be >= 0"),
    (dict(max_new_tokens=0), "max_new_tokens=0 must be >= 1"),
])
def test_generate_refuses_sampling_arguments_out_of_range(lm, kwargs, expected):
    with pytest.raises(GptjaxError) as e:
        lm.generate("ab", **{"max_new_tokens": 4, **kwargs})
    assert expected in str(e.value)


def test_cli_refuses_a_negative_temperature(monkeypatch, capsys, lm):
    assert cli_generate(monkeypatch, lm, "--prompt", "ab", "--temperature", "-1") == 2
    assert "temperature=-1.0 must be >= 0" in one_error_line(capsys)


# past the trained length

@pytest.mark.parametrize("position", ["rope", "alibi", "none"])
def test_generating_past_block_size_without_a_position_table_needs_allow_extrapolation(position):
    lm = tiny_lm(None, position=position)  # block_size 16
    prompt = [list(range(1, 11))]
    assert len(lm.generate_ids(prompt, max_new_tokens=6)[0]) == 6  # 10 + 6 = 16 fits
    with pytest.raises(GptjaxError) as e:
        lm.generate_ids(prompt, max_new_tokens=7)
    assert "extrapolates past the trained length" in str(e.value) and "allow_extrapolation=True" in str(e.value)
    with pytest.warns(UserWarning, match="extrapolates past the trained length"):
        (ids,) = lm.generate_ids(prompt, max_new_tokens=7, allow_extrapolation=True)
    assert len(ids) == 7


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_position_tables_slide_a_window_past_block_size_without_warning(position):
    lm = tiny_lm(None, position=position)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (ids,) = lm.generate_ids([list(range(1, 11))], max_new_tokens=20, temperature=0.0)
    assert len(ids) == 20


def test_cli_refuses_extrapolation_unless_allowed_then_warns_once(monkeypatch, capsys, lm):
    assert cli_generate(monkeypatch, lm, "--prompt", "abcdefghij", "--max-new-tokens", "10") == 2
    error = one_error_line(capsys)
    assert "extrapolates past the trained length" in error and "--allow-extrapolation" in error
    args = ("--prompt", "abcdefghij", "--max-new-tokens", "10", "--allow-extrapolation")
    assert cli_generate(monkeypatch, lm, *args) == 0
    out, err = capsys.readouterr()
    assert out.startswith("abcdefghij")
    assert len(err.splitlines()) == 1 and err.startswith("gptjax: warning: ") and "extrapolates" in err, err


def test_generate_help_describes_the_behaviour_past_the_trained_length(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--help"])
    assert e.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--allow-extrapolation" in help_text
    assert "sliding window, nanoGPT's cropping" in help_text
    assert "rope, alibi or no positions would extrapolate past its trained block_size" in help_text


# --escapes

@pytest.mark.parametrize("typed,meant", [
    ("h\u00e9llo\\n", "h\u00e9llo\n"),
    ("\u65e5\u672c\\t\u8a9e", "\u65e5\u672c\t\u8a9e"),
    ("a\\\\nb", "a\\nb"),
    ("\\x41\\u00e9\\U0001F600", "A\u00e9\U0001F600"),
    ("keep \\q and \\\u65e5", "keep \\q and \\\u65e5"),
])
def test_escapes_interpret_backslashes_only(typed, meant):
    assert interpret_escapes(typed) == meant


def test_a_bad_escape_is_one_clear_error():
    with pytest.raises(GptjaxError, match="names no character"):
        interpret_escapes("\\U00110000")


def test_cli_escapes_keep_non_ascii_prompts(monkeypatch, capsys, lm):
    args = ("--prompt", "h\u00e9llo\\n\u65e5\u672c", "--escapes", "--max-new-tokens", "2")
    assert cli_generate(monkeypatch, lm, *args) == 0
    assert capsys.readouterr().out.startswith("h\u00e9llo\n\u65e5\u672c")


# a model without a tokenizer

def test_a_model_without_a_tokenizer_works_on_ids_and_refuses_text(lm):
    bare = LM(lm.cfg, lm.params, None)
    np.testing.assert_allclose(bare.logits([[1, 2, 3]]), lm.logits([[1, 2, 3]]), rtol=1e-6)
    (ids,) = bare.generate_ids([[1, 2, 3]], max_new_tokens=5, temperature=0.0)
    assert len(ids) == 5  # no stop token without a tokenizer
    for call in (lambda: bare.score(["ab"]), lambda: bare.generate("ab")):
        with pytest.raises(GptjaxError) as e:
            call()
        message = str(e.value)
        assert "has none" in message and "--tokenizer-dir" in message and "generate_ids" in message
        assert "\n" not in message


def test_text_generation_is_id_generation_decoded(lm):
    ids = lm.generate_ids([lm.tokenizer.encode("ab")], max_new_tokens=6, temperature=0.0)
    assert lm.generate("ab", max_new_tokens=6, temperature=0.0) == [lm.tokenizer.decode(ids[0])]


def test_load_returns_an_lm_without_tokenizer_for_a_weights_only_checkpoint(monkeypatch, tmp_path, lm):
    import gptjax.checkpoint as checkpoint
    from gptjax import config as config_lib

    (tmp_path / "checkpoints").mkdir()
    meta = {"config": config_lib.to_dict(lm.cfg), "tokenizer": None}
    monkeypatch.setattr(checkpoint, "restore_params", lambda path, step, load_base, ema: (lm.params, meta, 7))
    loaded = gptjax.load(tmp_path)
    assert loaded.tokenizer is None and loaded.step == 7
    with pytest.raises(GptjaxError, match="no tokenizer|has none"):
        loaded.generate("ab")


def test_cli_generate_on_a_model_without_tokenizer_is_one_error_line(monkeypatch, capsys, lm):
    assert cli_generate(monkeypatch, LM(lm.cfg, lm.params, None), "--prompt", "ab") == 2
    assert "--tokenizer-dir" in one_error_line(capsys)


def test_the_api_imports_nothing_from_the_trainer():
    code = "import sys, gptjax.api; print(sorted(m for m in sys.modules if m.startswith('gptjax.train')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
