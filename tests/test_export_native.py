"""`gptjax export --format safetensors` and `gptjax.load` of the result: every ablation variant round-trips
bit-exactly, without the training workdir; bad or partial exports are clear errors and nothing is half-written."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import gptjax
from gptjax import cli, export
from gptjax.api import EXPORT_MARKER, LM
from gptjax.config import Config, ModelConfig
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.train import run as run_lib

FORWARD = jax.jit(lambda model, params, tokens: model.apply({"params": params}, tokens), static_argnums=0)

VARIANTS = {
    "gpt2-baseline": dict(),
    "alibi": dict(position="alibi"),
    "sinusoidal": dict(position="sinusoidal"),
    "no-positions": dict(position="none"),
    "strided": dict(attention="strided", stride=4),
    "local": dict(attention="local", window=5),
    "post-norm": dict(norm_placement="post"),
    "swiglu-gqa-rope-rmsnorm": dict(mlp="swiglu", n_kv_head=2, position="rope", norm="rmsnorm", use_bias=False),
    "untied": dict(tie_embeddings=False),
    "scan-layers": dict(scan_layers=True, tie_embeddings=False, mlp="swiglu", n_kv_head=1),
}


def variant_model(**overrides) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 101, "block_size": 16, "n_layer": 2, "n_head": 4, "d_model": 32, **overrides})


def char_tokenizer(vocab_size: int) -> tokenizers.CharTokenizer:
    return tokenizers.CharTokenizer("".join(chr(0x3041 + i) for i in range(vocab_size - 1)))


def random_lm(m: ModelConfig, seed: int = 0, step: int | None = 123) -> LM:
    """An LM with random params (norm scales near 1), built without compiling anything."""
    rng = np.random.default_rng(seed)
    flat = {name: (1.0 + 0.1 * rng.standard_normal(shape) if name.endswith("scale")
                   else 0.2 * rng.standard_normal(shape))
            .astype(np.float32) for name, shape in export.expected_param_shapes(m).items()}
    meta = {"record": {"git_commit": "abc123", "command": ["gptjax", "train"]}, "data_dir": "/data/x"}
    return LM(Config(name="native-test", model=m), export.unflatten_params(flat), char_tokenizer(m.vocab_size), step,
              meta)


def assert_same_params(a, b) -> None:
    flat_a, flat_b = export.flatten_params(jax.device_get(a)), export.flatten_params(jax.device_get(b))
    assert sorted(flat_a) == sorted(flat_b)
    for name in flat_a:
        assert flat_a[name].dtype == flat_b[name].dtype == np.float32, name
        np.testing.assert_array_equal(flat_a[name], flat_b[name], err_msg=name)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_round_trips_bit_exactly(variant, tmp_path):
    lm = random_lm(variant_model(**VARIANTS[variant]))
    out = tmp_path / "export"
    export.export_native(lm, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [export.WEIGHTS_FILE, export.CONFIG_FILE, export.RECORD_FILE, export.TOKENIZER_DIR, EXPORT_MARKER])

    loaded = gptjax.load(out)
    assert isinstance(loaded, LM)
    assert loaded.cfg == lm.cfg and loaded.step == 123
    assert tokenizers.fingerprint(loaded.tokenizer) == tokenizers.fingerprint(lm.tokenizer)
    assert loaded.meta["record"] == lm.meta["record"] and loaded.meta["data_dir"] == "/data/x"
    assert_same_params(lm.params, loaded.params)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, lm.config.vocab_size, (2, 16)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(FORWARD(lm.model, lm.params, tokens)),
                                  np.asarray(FORWARD(loaded.model, loaded.params, tokens)))


def test_tensor_names_are_logical_paths(tmp_path):
    from safetensors import safe_open

    for name, overrides in (("plain", {}), ("scan", {"scan_layers": True})):
        m = variant_model(**overrides)
        export.export_native(random_lm(m), tmp_path / name)
        with safe_open(str(tmp_path / name / export.WEIGHTS_FILE), framework="numpy") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        if overrides:
            assert shapes["layers/attn/query/kernel"] == (2, 32, 4, 8)
        else:
            assert shapes["layer_0/attn/query/kernel"] == (32, 4, 8) and shapes["layer_1/mlp/fc/bias"] == (128,)
        assert shapes["embedding"] == (128, 32) and shapes["pos_embedding"] == (16, 32)


def test_bfloat16_export_stores_rounded_weights(tmp_path):
    lm = random_lm(variant_model(), seed=3)
    export.export_native(lm, tmp_path / "f32")
    export.export_native(lm, tmp_path / "bf16", dtype="bfloat16")
    sizes = [(tmp_path / d / export.WEIGHTS_FILE).stat().st_size for d in ("f32", "bf16")]
    assert sizes[1] < 0.55 * sizes[0]
    assert json.loads((tmp_path / "bf16" / EXPORT_MARKER).read_text())["dtype"] == "bfloat16"
    loaded = gptjax.load(tmp_path / "bf16")
    rounded = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32), lm.params)
    assert_same_params(rounded, loaded.params)


def test_cli_exports_a_training_workdir(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPTJAX_CACHE", str(tmp_path / "cache"))
    m = variant_model(vocab_size=66, position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2)
    source = random_lm(m)
    cfg = Config(name="native-cli", model=m)
    workdir = run_lib.write_workdir(cfg, source.params, source.tokenizer, tmp_path / "run", {"test": True}, "test run")
    out = tmp_path / "export"
    assert cli.main(["export", "--workdir", str(workdir), "--format", "safetensors", "--out", str(out)]) == 0
    assert "as a gptjax export" in capsys.readouterr().out

    from_workdir, from_export = gptjax.load(workdir), gptjax.load(out)
    assert from_export.step == from_workdir.step == 0 and from_export.cfg == from_workdir.cfg
    assert_same_params(from_workdir.params, from_export.params)
    assert json.loads((out / export.RECORD_FILE).read_text()) == from_workdir.meta["record"]
    assert (out / export.TOKENIZER_DIR / "tokenizer.json").is_file()
    assert cli.main(["generate", "--workdir", str(out), "--prompt", "\u3041\u3042", "--max-new-tokens", "4"]) == 0

    before = sorted(p.name for p in out.iterdir())
    assert cli.main(["export", "--workdir", str(workdir), "--format", "safetensors", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists and is not empty" in err and "\n" not in err
    assert sorted(p.name for p in out.iterdir()) == before


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(tokenizers, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export.export_native(random_lm(variant_model()), tmp_path / "export")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(GptjaxError, match="export dtype 'float16'"):
        export.export_native(random_lm(variant_model()), tmp_path / "export", dtype="float16")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def exported(tmp_path) -> Path:
    out = tmp_path / "export"
    export.export_native(random_lm(variant_model()), out)
    return out


def test_load_rejects_a_truncated_weights_file(exported):
    weights = exported / export.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(GptjaxError, match="not a readable safetensors file.*truncated"):
        gptjax.load(exported)


@pytest.mark.parametrize("edit, fragment", [
    ({"d_model": 64}, "holds 32 embedding width, but its config has model.d_model=64"),
    ({"n_layer": 3}, "holds 2 layers, but its config has model.n_layer=3"),
    ({"n_layer": 1}, "holds 2 layers, but its config has model.n_layer=1"),
    ({"n_layer": 10**12}, "holds 2 layers, but its config has model.n_layer=1000000000000"),
    ({"n_head": 8}, "holds 4 query heads, but its config has model.n_head=8"),
    ({"n_kv_head": 2}, "holds 4 key/value heads, but its config has model.n_kv_head=2"),
    ({"vocab_size": 300}, "holds 128 vocabulary rows, but its config has model.vocab_size=300"),
    ({"vocab_multiple": 256}, "holds 128 vocabulary rows, but its config has model.vocab_size=101 (padded to a "
                              "multiple of model.vocab_multiple=256), which needs 256"),
    ({"vocab_size": 90}, "char tokenizer in"),  # same padded rows: only the tokenizer's 101 ids show the edit
    ({"d_ff": 64}, "holds 128 MLP width, but its config has model.d_ff=64"),
    ({"max_positions": 32}, "holds 16 position rows, but its config has model.max_positions=32"),
    ({"tie_embeddings": False}, "lacks param 'lm_head' that the config needs (check model.tie_embeddings)"),
    ({"use_bias": False}, "bias' (and 16 more) that the config does not have (check model.use_bias"),
    ({"position": "rope"}, "has param 'pos_embedding' that the config does not have (check model.position)"),
])
def test_load_rejects_a_config_edited_to_not_fit_the_weights(exported, edit, fragment):
    config = json.loads((exported / export.CONFIG_FILE).read_text())
    config["model"].update(edit)
    (exported / export.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(GptjaxError) as failure:
        gptjax.load(exported)
    message = str(failure.value)
    assert fragment in message and "\n" not in message, message
    if "vocab_size" in edit and edit["vocab_size"] < 101:
        assert "101 tokens, more than model.vocab_size=90" in message and "config.json was edited" in message


def rewrite_weights(path: Path, change) -> None:
    """Replaces the tensors of the safetensors file at `path` by `change(tensors)`."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(change(tensors), str(path))


@pytest.mark.parametrize("name, spoil, fragment", [
    ("layer_0/attn/query/kernel", lambda t: t.astype(np.int32), "is stored as I32, not a float type"),
    ("embedding", lambda t: (t > 0), "is stored as BOOL, not a float type"),
    ("layer_1/mlp/fc/bias", lambda t: np.where(np.arange(t.size) == 3, np.nan, t).astype(t.dtype),
     "holds 1 NaN or infinite value(s)"),
    ("norm_f/scale", lambda t: np.full_like(t, np.inf), "holds 32 NaN or infinite value(s)"),
    ("embedding", lambda t: np.full(t.shape, 1e300), "holds 4096 NaN or infinite value(s) (as float32)"),
])
def test_load_rejects_non_float_and_non_finite_tensors(exported, name, spoil, fragment):
    rewrite_weights(exported / export.WEIGHTS_FILE, lambda tensors: {**tensors, name: spoil(tensors[name])})
    with pytest.raises(GptjaxError) as failure:
        gptjax.load(exported)
    message = str(failure.value)
    assert f"tensor '{name}' " in message and fragment in message and "\n" not in message, message


def test_a_model_without_tokenizer_exports_and_loads(tmp_path):
    source = random_lm(variant_model(), seed=5)
    lm = LM(source.cfg, source.params, None, 7, source.meta)
    out = export.export_native(lm, tmp_path / "export")
    assert not (out / export.TOKENIZER_DIR).exists()
    assert json.loads((out / EXPORT_MARKER).read_text())["has_tokenizer"] is False

    loaded = gptjax.load(out)
    assert loaded.tokenizer is None and loaded.step == 7 and loaded.cfg == lm.cfg
    assert_same_params(lm.params, loaded.params)
    ids = np.random.default_rng(2).integers(0, 101, (2, 16))
    np.testing.assert_array_equal(loaded.logits(ids), source.logits(ids))
    with pytest.raises(GptjaxError, match="needs a tokenizer"):
        loaded.generate("hi")
    assert json.loads((tmp_path / "export" / EXPORT_MARKER).read_text())["format_version"] == export.FORMAT_VERSION


@pytest.mark.parametrize("damage, message", [
    (lambda out: (out / export.WEIGHTS_FILE).unlink(), "model.safetensors is missing"),
    (lambda out: (out / export.CONFIG_FILE).unlink(), r"export config not found: .*config\.json"),
    (lambda out: [p.unlink() for p in (out / export.TOKENIZER_DIR).iterdir()], "no tokenizer at"),
    (lambda out: (out / EXPORT_MARKER).write_text(json.dumps({"format_version": 99})), "format_version 99"),
    (lambda out: (out / EXPORT_MARKER).write_text("{not json"), r"is corrupt \(invalid JSON"),
    (lambda out: (out / EXPORT_MARKER).write_text("[1]"), "holds a JSON list, not an object"),
    (lambda out: (out / export.TOKENIZER_DIR / "tokenizer.json").rename(out / "moved.json"), "no tokenizer at"),
])
def test_load_rejects_an_incomplete_export(exported, damage, message):
    damage(exported)
    with pytest.raises(GptjaxError, match=message):
        gptjax.load(exported)


def test_experiment_source_reproduces_the_config_with_nested_sections(tmp_path):
    import dataclasses

    from gptjax import config as config_lib

    base = Config(name="nested", model=variant_model(position="rope", norm="rmsnorm"))
    prepare = dataclasses.replace(base.data.prepare, jaccard=0.7, languages=("en", "de"))
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, dataset="", path="/d", prepare=prepare))
    experiment = tmp_path / "experiment.py"
    experiment.write_text(run_lib.experiment_source(cfg, "a header\nof two lines"))
    assert experiment.read_text().startswith("# a header\n# of two lines\n")
    assert config_lib.to_config(config_lib.load_experiment(str(experiment))) == cfg
