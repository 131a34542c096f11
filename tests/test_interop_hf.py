"""gptjax <-> Hugging Face transformers: logits parity, greedy-generation parity, lossless round trips, tokenizers,
the import/export CLI, and clear errors (with nothing half-written) on bad input.

HF models are built locally from configs with random weights; nothing is downloaded."""
from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import jax
import numpy as np
import pytest

import gptjax
from gptjax import cli, export
from gptjax.api import LM
from gptjax.config import Config, DataConfig, ModelConfig, TrainConfig
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.generate import SamplingParams, generate_ids
from gptjax.interop import hf

FIXTURES = Path(__file__).parent / "fixtures" / "gpt2"
SHAKESPEARE = Path(gptjax.__file__).parent / "data" / "bundled" / "tinyshakespeare.txt"
LOGIT_TOLERANCE = 1e-5
NEW_TOKENS = 32


# ---------------------------------------------------------------- helpers


def char_tokenizer(vocab_size: int) -> tokenizers.CharTokenizer:
    """A char tokenizer with exactly `vocab_size` ids; `<|endoftext|>` is the last (vocab_size - 1)."""
    return tokenizers.CharTokenizer("".join(chr(0x4E00 + i) for i in range(vocab_size - 1)))


def random_params(m: ModelConfig, seed: int = 0, std: float = 0.2) -> dict:
    """Random float32 params of the right tree for `m` (norm scales near 1), without compiling anything."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in export.expected_param_shapes(m).items():
        noise = rng.standard_normal(shape).astype(np.float32)
        flat[name] = 1.0 + 0.1 * noise if name.endswith("scale") else std * noise
    return export.unflatten_params(flat)


def lm_for(m: ModelConfig, params: dict, tokenizer: tokenizers.Tokenizer | None = None) -> LM:
    return LM(Config(model=m), jax.tree_util.tree_map(np.asarray, params), tokenizer or char_tokenizer(m.vocab_size))


def random_ids(vocab_size: int, shape=(2, 40), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, shape).astype(np.int64)


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def load_hf(path: Path):
    """AutoModelForCausalLM from a local directory, asserting nothing was missing, unexpected or mismatched."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not info["error_msgs"], info
    return model.eval()


def build_hf(family: str, fields: dict, seed: int = 0):
    """A random-weight transformers model of `family` (a model_type) built from a config (no download), in eval
    mode. Vectors (norm gains, biases) get noise too, so a gain read into the wrong norm shows in the logits."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    eot = fields["vocab_size"] - 1
    config = AutoConfig.for_model(family, bos_token_id=eot, eos_token_id=eot, initializer_range=0.1, **fields)
    model = AutoModelForCausalLM.from_config(config).eval()
    if family != "gpt2":
        with torch.no_grad():
            for tensor in model.parameters():
                if tensor.ndim == 1:
                    tensor.add_(0.1 * torch.randn_like(tensor))
    return model


def per_layer(params: dict, m: ModelConfig) -> list[dict]:
    return [jax.tree_util.tree_map(np.asarray, hf.layer_params(params, m, i)) for i in range(m.n_layer)]


def assert_params_round_trip(original: dict, m: ModelConfig, imported: dict, imported_m: ModelConfig) -> None:
    """Every meaningful param bit-identical: all layers (scanned or not), norms, positions, and the real-vocab rows
    of the embedding and head. Padded-vocab rows are not exported, so they come back as zeros; biases a
    use_bias=False GPT-2 lacks come back as zeros."""
    v = m.vocab_size
    np.testing.assert_array_equal(np.asarray(original["embedding"])[:v], imported["embedding"][:v])
    assert not np.any(imported["embedding"][v:])
    if not m.tie_embeddings:
        np.testing.assert_array_equal(np.asarray(original["lm_head"])[:, :v], imported["lm_head"][:, :v])
        assert not np.any(imported["lm_head"][:, v:])
    for key in ("pos_embedding", "norm_f"):
        if key in original:
            for name, leaf in export.flatten_params({key: original[key]}).items():
                np.testing.assert_array_equal(leaf, export.flatten_params(imported)[name])
    for ours, theirs in zip(per_layer(original, m), per_layer(imported, imported_m)):
        flat_ours, flat_theirs = export.flatten_params(ours), export.flatten_params(theirs)
        for name, leaf in flat_theirs.items():
            if name in flat_ours:
                np.testing.assert_array_equal(flat_ours[name], leaf, err_msg=name)
            else:
                assert name.endswith("bias") and not np.any(leaf), name


def hf_greedy(model, prompt: list[int], eot: int) -> list[int]:
    """HF greedy continuation of `prompt`, without the stop token."""
    import torch

    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                         eos_token_id=eot, pad_token_id=eot)
    new = out[0, len(prompt):].tolist()
    return new[: new.index(eot)] if eot in new else new


def assert_greedy_parity(lm: LM, model, prompt_text: str) -> list[int]:
    """gptjax greedy ids == HF greedy ids token for token (HF may stop at eos, and so does gptjax), and
    LM.generate(temperature=0) returns the text of those ids."""
    eot = lm.tokenizer.eot_id
    prompt = lm.tokenizer.encode(prompt_text)
    theirs = hf_greedy(model, prompt, eot)
    ours = generate_ids(lm.model, lm.params, [prompt], NEW_TOKENS, eot, SamplingParams(temperature=0.0))[0]
    assert ours == theirs
    assert lm.generate(prompt_text, max_new_tokens=NEW_TOKENS, temperature=0.0) == [lm.tokenizer.decode(theirs)]
    return theirs


def gptjax_model(family: str, **overrides) -> ModelConfig:
    base = dict(vocab_size=257, block_size=48, n_layer=2, n_head=4, d_model=32)
    if family == "llama":
        base.update(norm="rmsnorm", position="rope", mlp="swiglu", use_bias=False, n_kv_head=2,
                    tie_embeddings=False, rope_theta=20000.0)
    base.update(overrides)
    return ModelConfig(**base)


# ---------------------------------------------------------------- HF -> gptjax: logits and lossless round trip

HF_SHAPES = {
    "gpt2-tied-v257": ("gpt2", dict(vocab_size=257, n_positions=64, n_embd=32, n_layer=2, n_head=4), None),
    "gpt2-untied-v1001-inner80-exactgelu": ("gpt2", dict(vocab_size=1001, n_positions=48, n_embd=48, n_layer=2,
                                                         n_head=3, n_inner=80, tie_word_embeddings=False,
                                                         layer_norm_epsilon=1e-6, activation_function="gelu"), None),
    "llama-mha-tied": ("llama", dict(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                                     max_position_embeddings=128), None),
    "llama-gqa2-untied-theta5e5-v1001": ("llama", dict(vocab_size=1001, hidden_size=64, intermediate_size=96,
                                                       num_hidden_layers=2, num_attention_heads=4,
                                                       num_key_value_heads=2, rope_theta=500000.0,
                                                       max_position_embeddings=256), None),
    "llama-gqa4-theta2500": ("llama", dict(vocab_size=300, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                           num_attention_heads=8, num_key_value_heads=2, rope_theta=2500.0,
                                           max_position_embeddings=64, rms_norm_eps=1e-5), None),
    "llama-mqa-tied-sharded": ("llama", dict(vocab_size=1001, hidden_size=64, intermediate_size=96,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                             tie_word_embeddings=True, rope_theta=1234.5), "60KB"),
    "llama-biases": ("llama", dict(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True),
                     None),
}


TINY = dict(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)
HF_FAMILY_SHAPES = {
    "llama3-rope-llama3": ("llama", TINY | dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "llama-rope-yarn": ("llama", TINY | dict(rope_parameters={
        "rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 16})),
    "llama-rope-linear": ("llama", TINY | dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4,
                                                                "factor": 2.0})),
    "mistral-sliding8": ("mistral", TINY | dict(sliding_window=8, head_dim=8)),
    "qwen2-qkvbias-sliding": ("qwen2", TINY | dict(num_hidden_layers=3, use_sliding_window=True, sliding_window=8,
                                                   max_window_layers=1, tie_word_embeddings=True)),
    "qwen3-qknorm-headdim16": ("qwen3", TINY | dict(head_dim=16)),
    "gemma2-softcap-LG": ("gemma2", TINY | dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                                                attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "gemma3-LLG-local-rope": ("gemma3_text", TINY | dict(
        num_hidden_layers=3, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                         "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}})),
    "mixtral-4experts-top2": ("mixtral", TINY | dict(num_local_experts=4, num_experts_per_tok=2, head_dim=8)),
    "qwen3moe-sparse-step2": ("qwen3_moe", TINY | dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                                                       decoder_sparse_step=2, norm_topk_prob=False)),
    "qwen3moe-first-dense-renorm": ("qwen3_moe", TINY | dict(num_hidden_layers=3, num_experts=4, num_experts_per_tok=3,
                                                             moe_intermediate_size=24, mlp_only_layers=[0],
                                                             norm_topk_prob=True)),
}
FAMILY_TOLERANCE = 1e-4


@pytest.mark.parametrize("shape", list(HF_FAMILY_SHAPES))
def test_hf_families_import_with_logit_and_greedy_parity_and_export_back(shape, tmp_path):
    """Each family HF -> gptjax: logits within 1e-4 and greedy decoding (KV cache, past the sliding window) equal to
    HF generate; gptjax -> HF: the same model_type, every tensor bit-identical, the same config on re-import."""
    pytest.importorskip("transformers")
    family, fields = HF_FAMILY_SHAPES[shape]
    model = build_hf(family, fields, seed=2)
    src = tmp_path / "hf"
    model.save_pretrained(src)
    read = hf.read_hf_dir(src)
    assert read.family == family
    lm = lm_for(read.model, read.params)
    ids = random_ids(fields["vocab_size"], (2, 40))
    diff = max_abs_diff(lm.logits(ids), hf_logits(model, ids))
    print(f"{shape}: HF -> gptjax max |logit diff| = {diff:.2e}")
    assert diff <= FAMILY_TOLERANCE
    prompt = lm.tokenizer.decode(random_ids(fields["vocab_size"] - 1, (7,), seed=3).tolist())
    assert len(assert_greedy_parity(lm, model, prompt)) > 0

    out = tmp_path / "back"
    hf.export_hf(lm.cfg, read.params, lm.tokenizer, out)
    assert json.loads((out / "config.json").read_text())["model_type"] == family
    original = dict(export.read_safetensors_lazily(src / hf.WEIGHTS_FILE, None))  # as saved: per-expert names
    for name, tensor in export.read_safetensors_lazily(out / hf.WEIGHTS_FILE, None):
        np.testing.assert_array_equal(tensor, original[name], err_msg=name)
    assert hf.read_hf_dir(out).model == read.model
    assert max_abs_diff(hf_logits(load_hf(out), ids), hf_logits(model, ids)) == 0.0


@pytest.mark.parametrize("shape", list(HF_SHAPES))
def test_hf_import_matches_logits_and_round_trips(shape, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    family, fields, shard_size = HF_SHAPES[shape]
    model = build_hf(family, fields)
    src = tmp_path / "hf"
    model.save_pretrained(src, **({"max_shard_size": shard_size} if shard_size else {}))
    assert (src / hf.WEIGHTS_INDEX_FILE).is_file() == bool(shard_size)

    read = hf.read_hf_dir(src)
    assert read.family == family and read.model.vocab_size == fields["vocab_size"]
    lm = lm_for(read.model, read.params)
    ids = random_ids(fields["vocab_size"])
    diff = max_abs_diff(lm.logits(ids), hf_logits(model, ids))
    print(f"{shape}: HF -> gptjax max |logit diff| = {diff:.2e}")
    assert diff <= LOGIT_TOLERANCE

    out = tmp_path / "back"
    hf.export_hf(lm.cfg, read.params, lm.tokenizer, out)
    original = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}
    exported = dict(export.read_safetensors_lazily(out / hf.WEIGHTS_FILE, None))
    for name, tensor in exported.items():
        np.testing.assert_array_equal(tensor, original[name], err_msg=name)
    again = hf.read_hf_dir(out)
    assert again.model == read.model
    assert_params_round_trip(read.params, read.model, again.params, again.model)
    reloaded = load_hf(out)
    assert max_abs_diff(hf_logits(reloaded, ids), hf_logits(model, ids)) == 0.0


@pytest.mark.parametrize("shape", ["gpt2-tied-v257", "llama-gqa2-untied-theta5e5-v1001"])
def test_greedy_generation_matches_hf(shape, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    family, fields, _ = HF_SHAPES[shape]
    model = build_hf(family, fields, seed=1)
    model.save_pretrained(tmp_path / "hf")
    read = hf.read_hf_dir(tmp_path / "hf")
    lm = lm_for(read.model, read.params)
    prompt = lm.tokenizer.decode(random_ids(fields["vocab_size"] - 1, (7,), seed=3).tolist())
    continuation = assert_greedy_parity(lm, model, prompt)
    assert len(continuation) > 0


# ---------------------------------------------------------------- gptjax -> HF

GPTJAX_SHAPES = {
    "gpt2-bias-tied": gptjax_model("gpt2"),
    "gpt2-nobias-untied-scan-exactgelu": gptjax_model("gpt2", use_bias=False, tie_embeddings=False, scan_layers=True,
                                                      vocab_size=1001, max_positions=64, gelu_approximate=False),
    "llama-gqa2-untied": gptjax_model("llama"),
    "llama-mqa-bias-tied-scan": gptjax_model("llama", n_kv_head=1, use_bias=True, tie_embeddings=True,
                                             scan_layers=True, d_ff=72, rope_theta=10000.0),
    "llama3-scaled": gptjax_model("llama", rope_scaling="llama3", rope_factor=8.0, rope_original_positions=16,
                                  rope_theta=5e5),
    "llama-yarn": gptjax_model("llama", rope_scaling="yarn", rope_factor=4.0, rope_original_positions=16),
    "mistral-local8": gptjax_model("llama", attention="local", window=8),
    "qwen2-qkvbias-GL": gptjax_model("llama", qkv_bias=True, layer_pattern="GL", window=8),
    "qwen2-zero-bias-LLG-scan": gptjax_model("llama", layer_pattern="LLG", window=8, n_layer=3, scan_layers=True),
    "qwen3-qknorm-dhead16": gptjax_model("llama", qk_norm=True, d_head=16),
    "gemma2": gptjax_model("llama", mlp="geglu", norm_offset=True, embed_scale=True, sandwich_norm=True,
                           attn_softcap=5.0, logit_softcap=3.0, query_scale_dim=24, layer_pattern="LG", window=8,
                           d_head=16, tie_embeddings=True),
    "gemma3-scan": gptjax_model("llama", mlp="geglu", norm_offset=True, embed_scale=True, sandwich_norm=True,
                                qk_norm=True, layer_pattern="LLG", n_layer=3, window=8, rope_local_theta=1e4,
                                rope_theta=1e6, rope_scaling="linear", rope_factor=8.0, tie_embeddings=True,
                                scan_layers=True),
    "mixtral": gptjax_model("llama", moe_experts=4, moe_top_k=2, d_ff=48, moe_z_loss_weight=0.0,
                            moe_aux_loss_weight=0.02),
    "qwen3moe-first-dense": gptjax_model("llama", qk_norm=True, moe_experts=4, moe_top_k=2, moe_d_ff=24, n_layer=3,
                                         moe_first_dense=1, moe_renormalize=False, moe_z_loss_weight=0.0),
}


@pytest.mark.parametrize("shape", list(GPTJAX_SHAPES))
def test_gptjax_export_matches_hf_logits_and_round_trips(shape, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    m = GPTJAX_SHAPES[shape]
    params = random_params(m, seed=1)
    lm = lm_for(m, params)
    out = tmp_path / "hf"
    notes = hf.export_hf(lm.cfg, params, lm.tokenizer, out)
    assert any("zero biases" in note for note in notes) == (not m.use_bias and not m.qkv_bias and (
        m.position == "learned" or bool(m.layer_pattern) and not m.norm_offset))

    model = load_hf(out)
    assert type(model).__name__ == hf.ARCHITECTURES[hf.hf_family(m)]
    assert model.config.vocab_size == m.vocab_size and model.config.tie_word_embeddings == m.tie_embeddings
    assert model.get_input_embeddings().weight.shape[0] == m.vocab_size
    ids = random_ids(m.vocab_size, (2, 33))
    diff = max_abs_diff(lm.logits(ids), hf_logits(model, ids))
    print(f"{shape}: gptjax -> HF max |logit diff| = {diff:.2e}")
    first_families = hf.hf_family(m) in ("gpt2", "llama") and m.rope_scaling == "none"
    assert diff <= (LOGIT_TOLERANCE if first_families else FAMILY_TOLERANCE)

    again = hf.read_hf_dir(out)
    if m.position == "rope":
        assert again.model == dataclasses.replace(m, scan_layers=False, d_ff=m.ff_dim,
                                                  qkv_bias=m.qkv_bias or hf.hf_family(m) == "qwen2")
    assert again.model.rope_theta == m.rope_theta and again.model.kv_heads == m.kv_heads
    assert again.model.ff_dim == m.ff_dim and again.model.tie_embeddings == m.tie_embeddings
    assert_params_round_trip(params, m, again.params, again.model)


def test_export_bfloat16_halves_the_file_and_loads(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch

    m = gptjax_model("llama")
    params = random_params(m, seed=2)
    lm = lm_for(m, params)
    hf.export_hf(lm.cfg, params, lm.tokenizer, tmp_path / "f32")
    hf.export_hf(lm.cfg, params, lm.tokenizer, tmp_path / "bf16", dtype="bfloat16")
    sizes = [(tmp_path / d / hf.WEIGHTS_FILE).stat().st_size for d in ("f32", "bf16")]
    assert sizes[1] < 0.55 * sizes[0]
    model = load_hf(tmp_path / "bf16")
    assert model.dtype == torch.bfloat16
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


# ---------------------------------------------------------------- a model trained with gptjax, through the CLI


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory) -> tuple[Path, Path]:
    """(workdir, prepared data dir) of a GPT-2-family model trained 6 steps on the bundled Shakespeare (char)."""
    from gptjax.prepare.resolve import resolve_data
    from gptjax.train.loop import train

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTJAX_CACHE", str(root / "cache"))
        cfg = Config(
            name="interop-trained",
            model=ModelConfig(block_size=64, n_layer=2, n_head=4, d_model=32, use_bias=True),
            data=DataConfig(dataset="shakespeare_char"),
            train=TrainConfig(batch_size=8, steps=6, lr=3e-3, warmup_steps=1, eval_every=6, eval_batches=1,
                              log_every=1, checkpoint_every=6, tensorboard=False),
        )
        train(cfg, root / "run", show_progress=False)
        data_dir = resolve_data(cfg.data)
    return root / "run", data_dir


@pytest.fixture(scope="module")
def trained_hf_export(trained_workdir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained_export") / "hf"
    assert cli.main(["export", "--workdir", str(trained_workdir[0]), "--format", "hf", "--out", str(out)]) == 0
    return out


def test_trained_model_exports_to_hf(trained_workdir, trained_hf_export):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    lm = gptjax.load(trained_workdir[0])
    assert lm.step == 6
    model = load_hf(trained_hf_export)
    text = SHAKESPEARE.read_text()[2000:2600]
    ids = np.array([lm.tokenizer.encode(text[:60])])
    diff = max_abs_diff(lm.logits(ids), hf_logits(model, ids))
    print(f"trained: gptjax -> HF max |logit diff| = {diff:.2e}")
    assert diff <= LOGIT_TOLERANCE

    hf_tokenizer = AutoTokenizer.from_pretrained(trained_hf_export)
    assert hf_tokenizer.encode(text) == lm.tokenizer.encode(text)
    assert hf_tokenizer.eos_token_id == lm.tokenizer.eot_id
    assert hf_tokenizer.decode(lm.tokenizer.encode(text)) == text
    assert_greedy_parity(lm, model, "ROMEO:\nWhat")


def test_trained_model_imports_back_into_a_working_workdir(trained_workdir, trained_hf_export, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.setenv("GPTJAX_CACHE", str(tmp_path / "cache"))
    run_dir, data_dir = trained_workdir
    workdir = tmp_path / "imported"
    assert cli.main(["import", "--format", "hf", "--src", str(trained_hf_export), "--workdir", str(workdir)]) == 0
    assert "imported GPT2LMHeadModel" in capsys.readouterr().out

    original, imported = gptjax.load(run_dir), gptjax.load(workdir)
    assert imported.step == 0
    assert tokenizers.fingerprint(imported.tokenizer) == tokenizers.fingerprint(original.tokenizer)
    assert_params_round_trip(jax.device_get(original.params), original.config, jax.device_get(imported.params),
                             imported.config)
    ids = np.array([original.tokenizer.encode("KING HENRY:\nGood morrow")])
    np.testing.assert_array_equal(original.logits(ids), imported.logits(ids))
    for name in ("config.json", "record.json", "experiment.py", "tokenizer/tokenizer.json"):
        assert (workdir / name).is_file(), name

    assert cli.main(["generate", "--workdir", str(workdir), "--prompt", "ROMEO:", "--max-new-tokens", "8",
                    "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert cli.main(["eval", "--workdir", str(workdir), "--data", str(data_dir), "--max-tokens", "256"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"] == 256

    (workdir / "data").symlink_to(data_dir, target_is_directory=True)
    assert cli.main(["train", "--config", str(workdir / "experiment.py"), "--workdir", str(workdir),
                    "--config.train.steps=2", "--config.train.eval_batches=1", "--config.train.tensorboard=false"]) == 0
    continued = gptjax.load(workdir)
    assert continued.step == 2
    changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), imported.params,
                                     continued.params)
    assert any(jax.tree_util.tree_leaves(changed))


# ---------------------------------------------------------------- tokenizers


def test_sentencepiece_tokenizer_round_trips_through_hf(tmp_path):
    text = SHAKESPEARE.read_text()[:150_000]
    tok = tokenizers.SentencePieceTokenizer.train([text], vocab_size=384)
    m = gptjax_model("llama", vocab_size=tok.vocab_size)
    params = random_params(m, seed=4)
    out = tmp_path / "hf"
    notes = hf.export_hf(Config(model=m), params, tok, out)
    assert "tokenizer.model" in notes[0]
    assert (out / "tokenizer.model").read_bytes() == tok.model_proto
    back = hf.read_hf_dir(out)
    assert tokenizers.fingerprint(back.tokenizer) == tokenizers.fingerprint(tok)

    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer.eos_token_id == tok.eot_id
    start = text.index("\n\n", 100_000) + 2
    sample = text[start:start + 1000]
    assert sample[0].isalpha()  # HF's Metaspace drops sentencepiece's dummy prefix before a leading "\n" or space
    assert hf_tokenizer.encode(sample) == tok.encode(sample)
    assert hf_tokenizer.decode(tok.encode(sample)) == tok.decode(tok.encode(sample))


def test_llama_style_sentencepiece_without_endoftext_maps_eot_to_hf_eos(tmp_path):
    import io

    import sentencepiece as spm

    lines = SHAKESPEARE.read_text()[:60_000].splitlines()
    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model_file, vocab_size=400,
                                   model_type="bpe", byte_fallback=True, minloglevel=2)
    proto = model_file.getvalue()
    plain = spm.SentencePieceProcessor(model_proto=proto)
    assert plain.piece_to_id(tokenizers.EOT) == plain.unk_id() and plain.id_to_piece(2) == "</s>"

    m = gptjax_model("llama", vocab_size=400)
    lm = lm_for(m, random_params(m))
    src = tmp_path / "hf"
    hf.export_hf(lm.cfg, lm.params, lm.tokenizer, src)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (src / name).unlink()
    (src / "tokenizer.model").write_bytes(proto)
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "eos_token": "</s>",
                                                           "bos_token": "<s>", "unk_token": "<unk>"}))
    tok = hf.read_hf_dir(src).tokenizer
    assert tok.kind == "sentencepiece" and tok.eot_id == 2 == plain.eos_id()
    assert tok.vocab_size == plain.get_piece_size()
    sample = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert tok.encode(sample) == plain.encode(sample)
    assert tok.decode(tok.encode("Hi") + [tok.eot_id] + tok.encode("there")) == f"Hi{tokenizers.EOT}there"


def test_gpt2_bpe_tokenizer_round_trips_through_hf(tmp_path):
    tok = tokenizers.Gpt2BpeAdapter((FIXTURES / "gpt2_vocab.json").read_bytes(),
                                    (FIXTURES / "gpt2_merges.txt").read_bytes())
    m = gptjax_model("gpt2", vocab_size=tok.vocab_size, n_layer=1, d_model=16)
    out = tmp_path / "hf"
    hf.export_hf(Config(model=m), random_params(m), tok, out)
    back = hf.read_hf_dir(out)
    assert back.tokenizer.kind == "gpt2_bpe"
    assert tokenizers.fingerprint(back.tokenizer) == tokenizers.fingerprint(tok)

    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    text = (FIXTURES / "address.txt").read_text() + (FIXTURES / "german.txt").read_text()
    assert hf_tokenizer.encode(text) == tok.encode(text)
    assert hf_tokenizer.eos_token_id == tok.eot_id == 50256


# ---------------------------------------------------------------- errors, with nothing half-written


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    """A valid HF GPT-2 directory written by gptjax's exporter (no torch needed)."""
    m = gptjax_model("gpt2")
    src = tmp_path / "hf"
    hf.export_hf(Config(model=m), random_params(m), char_tokenizer(m.vocab_size), src)
    return src


def expect_import_error(src: Path, workdir: Path, *fragments: str, tokenizer_dir: Path | None = None) -> None:
    """`gptjax import` fails with one GptjaxError mentioning `fragments`, and the workdir is untouched."""
    before = sorted(p.name for p in workdir.parent.iterdir())
    with pytest.raises(GptjaxError) as failure:
        hf.import_hf(src, workdir, tokenizer_dir=tokenizer_dir)
    for fragment in fragments:
        assert fragment in str(failure.value), str(failure.value)
    assert "\n" not in str(failure.value)
    assert not workdir.exists()
    assert sorted(p.name for p in workdir.parent.iterdir()) == before


def test_import_rejects_missing_files(hf_dir, tmp_path):
    workdir = tmp_path / "wd"
    expect_import_error(tmp_path / "nowhere", workdir, "is not a directory")
    (hf_dir / "config.json").rename(tmp_path / "config.json")
    expect_import_error(hf_dir, workdir, "has no config.json")
    (tmp_path / "config.json").rename(hf_dir / "config.json")
    (hf_dir / hf.WEIGHTS_FILE).unlink()
    expect_import_error(hf_dir, workdir, "holds no weights", hf.WEIGHTS_FILE)


def test_import_refuses_pytorch_bin_with_a_conversion_hint(hf_dir, tmp_path):
    (hf_dir / hf.WEIGHTS_FILE).rename(hf_dir / "pytorch_model.bin")
    expect_import_error(hf_dir, tmp_path / "wd", "pytorch_model.bin", "does not unpickle", "save_pretrained")


def test_import_rejects_unknown_architecture(hf_dir, tmp_path):
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "model_type": "falcon"}))
    expect_import_error(hf_dir, tmp_path / "wd", "model_type 'falcon' is not supported")


@pytest.mark.parametrize("field, value, fragment", [
    ("n_embd", 64, "tensor 'transformer.wte.weight' has shape [257, 32] but config.json implies [257, 64]"),
    ("vocab_size", 300, "'transformer.wte.weight' has shape [257, 32] but config.json implies [300, 32]"),
    ("n_layer", 3, "lack tensor 'transformer.h.2."),
    ("n_layer", 1, "have tensor 'transformer.h.1."),
    ("n_layer", 10**12, "config.json gives 1000000000000 layers, but the weights in"),
    ("n_head", 0, "'n_head' = 0 is not a valid int > 0"),
    ("activation_function", "relu", "activation_function='relu' is not supported"),
])
def test_import_rejects_config_weight_mismatch(hf_dir, tmp_path, field, value, fragment):
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, field: value}))
    expect_import_error(hf_dir, tmp_path / "wd", fragment)


def test_import_rejects_required_field_and_scaled_rope(tmp_path):
    m = gptjax_model("llama")
    src = tmp_path / "hf"
    hf.export_hf(Config(model=m), random_params(m), char_tokenizer(m.vocab_size), src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "hidden_size"}))
    expect_import_error(src, tmp_path / "wd", "lacks the required field 'hidden_size'")
    scaled = {**config, "rope_parameters": {"rope_type": "dynamic", "rope_theta": 5e5, "factor": 8.0}}
    (src / "config.json").write_text(json.dumps(scaled))
    expect_import_error(src, tmp_path / "wd", "rope_type='dynamic' is not supported")


def test_import_rejects_truncated_safetensors(hf_dir, tmp_path):
    weights = hf_dir / hf.WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    expect_import_error(hf_dir, tmp_path / "wd", "not a readable safetensors file", "truncated")
    weights.write_bytes(data[:20])
    expect_import_error(hf_dir, tmp_path / "wd", "not a readable safetensors file")


def test_import_refuses_tokenizer_files_it_cannot_read(hf_dir, tmp_path):
    """Tokenizer files that are there but unusable are an error, never silently dropped."""
    spec = json.loads((hf_dir / "tokenizer.json").read_text())
    (hf_dir / "tokenizer.json").write_text(json.dumps({**spec, "model": {"type": "BPE", "vocab": {}, "merges": []}}))
    expect_import_error(hf_dir, tmp_path / "wd", "holds tokenizer files gptjax cannot read (tokenizer.json)",
                        "--tokenizer-dir")
    (hf_dir / "tokenizer.json").unlink()
    (hf_dir / "vocab.json").write_text("{}")
    expect_import_error(hf_dir, tmp_path / "wd", "cannot read (vocab.json)")


def test_import_checks_the_tokenizer_dir(hf_dir, tmp_path):
    expect_import_error(hf_dir, tmp_path / "wd", "--tokenizer-dir", "is not a directory",
                        tokenizer_dir=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    expect_import_error(hf_dir, tmp_path / "wd", "holds no tokenizer gptjax can read", "vocab.json + merges.txt",
                        tokenizer_dir=tmp_path / "empty")
    too_big = tmp_path / "too-big"
    bigger = gptjax_model("gpt2", vocab_size=300)
    hf.export_hf(Config(model=bigger), random_params(bigger), char_tokenizer(300), too_big)
    expect_import_error(hf_dir, tmp_path / "wd", "char tokenizer in", "has 300 tokens, more than model.vocab_size=257",
                        "--tokenizer-dir whose vocabulary fits", tokenizer_dir=too_big)


def spoil_tensor(path: Path, name: str, spoil) -> None:
    """Rewrites the safetensors file at `path` with tensor `name` replaced by `spoil(tensor)`."""
    from safetensors.numpy import save_file

    tensors = dict(export.read_safetensors_lazily(path, None))
    save_file({**tensors, name: spoil(tensors[name])}, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("name, spoil, fragment", [
    ("transformer.h.0.attn.c_attn.weight", lambda t: t.astype(np.int64), "is stored as I64, not a float type"),
    ("transformer.ln_f.bias", lambda t: t.astype(np.uint8), "is stored as U8, not a float type"),
    ("transformer.wte.weight", lambda t: np.where(t > 0.3, np.nan, t), "NaN or infinite value(s)"),
    ("transformer.h.1.mlp.c_proj.weight", lambda t: np.where(t > 0.3, -np.inf, t), "NaN or infinite value(s)"),
])
def test_import_refuses_non_float_and_non_finite_tensors(hf_dir, tmp_path, name, spoil, fragment):
    spoil_tensor(hf_dir / hf.WEIGHTS_FILE, name, spoil)
    expect_import_error(hf_dir, tmp_path / "wd", f"tensor '{name}' ", fragment)


def test_import_reads_float16_and_bfloat16_weights(hf_dir):
    import ml_dtypes

    expected = export.flatten_params(hf.read_hf_dir(hf_dir).params)
    spoil_tensor(hf_dir / hf.WEIGHTS_FILE, "transformer.wte.weight", lambda t: t.astype(np.float16))
    spoil_tensor(hf_dir / hf.WEIGHTS_FILE, "transformer.wpe.weight", lambda t: t.astype(ml_dtypes.bfloat16))
    imported = export.flatten_params(hf.read_hf_dir(hf_dir).params)
    np.testing.assert_array_equal(imported["embedding"][:257],
                                  expected["embedding"][:257].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(imported["pos_embedding"],
                                  expected["pos_embedding"].astype(ml_dtypes.bfloat16).astype(np.float32))


# ---------------------------------------------------------------- weights-only checkpoints (no tokenizer files)

WEIGHTS_ONLY_GPT2 = dict(vocab_size=257, n_positions=64, n_embd=32, n_layer=2, n_head=4)


def weights_only_hf_dir(path: Path, fields: dict, seed: int = 0):
    """A research-style checkpoint: a GPT2LMHeadModel's save_pretrained output (config + safetensors), no tokenizer."""
    model = build_hf("gpt2", fields, seed)
    model.save_pretrained(path)
    assert (path / "config.json").is_file() and (path / hf.WEIGHTS_FILE).is_file()
    assert not [name for name in hf.TOKENIZER_FILES if (path / name).exists()]
    return model


def test_weights_only_hf_dir_imports_without_tokenizer(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    monkeypatch.setenv("GPTJAX_CACHE", str(tmp_path / "cache"))
    model = weights_only_hf_dir(tmp_path / "hf", WEIGHTS_ONLY_GPT2)
    workdir = tmp_path / "wd"
    assert cli.main(["import", "--format", "hf", "--src", str(tmp_path / "hf"), "--workdir", str(workdir)]) == 0
    printed = capsys.readouterr().out
    assert "imported GPT2LMHeadModel" in printed and "no tokenizer" in printed
    assert "training" in printed and "--tokenizer-dir" in printed and "gptjax train" not in printed
    assert not (workdir / export.TOKENIZER_DIR).exists() and not (workdir / export.EXPERIMENT_FILE).exists()

    from gptjax.checkpoint import restore_params

    _, meta, step = restore_params(workdir)
    assert step == 0 and meta["tokenizer"] is None and meta["tokenizer_fingerprint"] is None

    lm = gptjax.load(workdir)
    assert lm.tokenizer is None
    ids = random_ids(257)
    diff = max_abs_diff(lm.logits(ids), hf_logits(model, ids))
    assert diff <= LOGIT_TOLERANCE
    with pytest.raises(GptjaxError, match="needs a tokenizer"):
        lm.generate("hello")
    prompt = random_ids(256, (7,), seed=3).tolist()
    assert lm.generate_ids([prompt], max_new_tokens=8, temperature=0.0)[0] == hf_greedy(model, prompt, 257)[:8]

    hf_out = tmp_path / "hf-again"
    assert cli.main(["export", "--workdir", str(workdir), "--format", "hf", "--out", str(hf_out)]) == 0
    assert "no tokenizer" in capsys.readouterr().out
    assert sorted(p.name for p in hf_out.iterdir()) == ["config.json", hf.WEIGHTS_FILE]
    config = json.loads((hf_out / "config.json").read_text())
    assert config["eos_token_id"] is None and config["bos_token_id"] is None
    assert max_abs_diff(hf_logits(load_hf(hf_out), ids), hf_logits(model, ids)) == 0.0
    assert hf.read_hf_dir(hf_out).tokenizer is None

    native_out = tmp_path / "native"
    assert cli.main(["export", "--workdir", str(workdir), "--format", "safetensors", "--out", str(native_out)]) == 0
    np.testing.assert_array_equal(gptjax.load(native_out).logits(ids), lm.logits(ids))


def test_weights_only_hf_dir_imports_with_a_tokenizer_dir(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    monkeypatch.setenv("GPTJAX_CACHE", str(tmp_path / "cache"))
    fields = dict(vocab_size=50257, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    model = weights_only_hf_dir(tmp_path / "hf", fields, seed=2)
    tokenizer_dir = tmp_path / "gpt2-tokenizer"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "vocab.json").write_bytes((FIXTURES / "gpt2_vocab.json").read_bytes())
    (tokenizer_dir / "merges.txt").write_bytes((FIXTURES / "gpt2_merges.txt").read_bytes())
    workdir = tmp_path / "wd"
    assert cli.main(["import", "--format", "hf", "--src", str(tmp_path / "hf"), "--workdir", str(workdir),
                     "--tokenizer-dir", str(tokenizer_dir)]) == 0
    printed = capsys.readouterr().out
    assert "gpt2_bpe tokenizer" in printed
    assert f"--tokenizer gpt2_bpe --tokenizer-dir {workdir.absolute() / export.TOKENIZER_DIR}" in printed
    assert f"gptjax train --config {workdir.absolute() / export.EXPERIMENT_FILE}" in printed
    assert (workdir / export.EXPERIMENT_FILE).is_file()

    lm = gptjax.load(workdir)
    expected = tokenizers.Gpt2BpeAdapter.from_dir(tokenizer_dir)
    assert tokenizers.fingerprint(lm.tokenizer) == tokenizers.fingerprint(expected)
    assert tokenizers.fingerprint(tokenizers.load(workdir / export.TOKENIZER_DIR)) == tokenizers.fingerprint(expected)
    assert_greedy_parity(lm, model, "Four score and seven years ago")

    # the tokenizer dir may also be a gptjax tokenizer directory (here: the imported workdir's own)
    again = tmp_path / "wd-again"
    hf.import_hf(tmp_path / "hf", again, tokenizer_dir=workdir / export.TOKENIZER_DIR)
    assert tokenizers.fingerprint(gptjax.load(again).tokenizer) == tokenizers.fingerprint(expected)

    # the printed advice, followed literally (a few flags added to make it a seconds-long run), trains the import
    prepare, train = re.findall(r"`gptjax ([^`]*)`", printed)
    prepare = prepare.replace("TEXT...", str(FIXTURES / "tinystories_sample.txt"))
    assert cli.main(shlex.split(prepare) + ["--raw", "--txt-mode", "blank_lines", "--workers", "1", "--quiet"]) == 0
    assert cli.main(shlex.split(train) + ["--config.train.steps=1", "--config.train.eval_batches=1",
                                          "--config.train.tensorboard=false"]) == 0
    assert gptjax.load(workdir).step == 1


def test_import_leaves_an_existing_workdir_untouched(hf_dir, tmp_path):
    workdir = tmp_path / "wd"
    (workdir / "checkpoints" / "7").mkdir(parents=True)
    (workdir / "config.json").write_text("{}")
    with pytest.raises(GptjaxError, match="already exists and is not empty"):
        hf.import_hf(hf_dir, workdir)
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == ["checkpoints", "checkpoints/7",
                                                                              "config.json"]
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_import_cli_failure_is_one_line(hf_dir, tmp_path, capsys):
    (hf_dir / hf.WEIGHTS_FILE).write_bytes(b"not safetensors")
    assert cli.main(["import", "--format", "hf", "--src", str(hf_dir), "--workdir", str(tmp_path / "wd")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gptjax: error: ") and "\n" not in err
    assert not (tmp_path / "wd").exists()


def test_import_reads_a_base_model_checkpoint_without_prefix(hf_dir):
    """The original GPT-2 release stores `h.0.attn.c_attn.weight`, `wte.weight`, ... plus causal-mask buffers."""
    from safetensors.numpy import save_file

    expected = export.flatten_params(hf.read_hf_dir(hf_dir).params)
    tensors = dict(export.read_safetensors_lazily(hf_dir / hf.WEIGHTS_FILE, None))
    base = {name.removeprefix("transformer."): tensor for name, tensor in tensors.items()}
    base |= {f"h.{i}.attn.bias": np.tril(np.ones((1, 1, 48, 48), np.float32)) for i in range(2)}
    save_file(base, str(hf_dir / hf.WEIGHTS_FILE), metadata={"format": "pt"})
    imported = export.flatten_params(hf.read_hf_dir(hf_dir).params)
    assert sorted(imported) == sorted(expected)
    for name, leaf in expected.items():
        np.testing.assert_array_equal(imported[name], leaf, err_msg=name)


def test_n_positions_smaller_than_block_size_is_an_error(hf_dir):
    with pytest.raises(GptjaxError, match="n_positions=48 is smaller than the block size 64"):
        hf.read_hf_dir(hf_dir, block_size=64)
    assert hf.read_hf_dir(hf_dir, block_size=16).model.block_size == 16
    assert hf.read_hf_dir(hf_dir).model.block_size == 48


@pytest.mark.parametrize("overrides, switch", [
    (dict(position="alibi"), "model.position='alibi'"),
    (dict(position="sinusoidal"), "model.position='sinusoidal'"),
    (dict(position="none"), "model.position='none'"),
    (dict(attention="strided"), "model.attention='strided'"),
    (dict(attention="local"), "model.attention='local'"),
    (dict(norm_placement="post"), "model.norm_placement='post'"),
    (dict(norm="rmsnorm"), "model.norm='rmsnorm'"),
    (dict(mlp="swiglu"), "model.mlp='swiglu'"),
    (dict(n_kv_head=2), "model.n_kv_head=2"),
    (dict(position="rope", norm="rmsnorm", mlp="gelu"), "model.mlp='gelu'"),
    (dict(position="rope", norm="layernorm", mlp="swiglu"), "model.norm='layernorm'"),
])
def test_export_of_unrepresentable_config_names_the_switch(overrides, switch, tmp_path):
    m = gptjax_model("gpt2", **overrides)
    out = tmp_path / "out"
    with pytest.raises(GptjaxError) as failure:
        hf.export_hf(Config(model=m), random_params(m), char_tokenizer(m.vocab_size), out)
    assert switch in str(failure.value) and "--format safetensors" in str(failure.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_refuses_a_non_empty_destination(tmp_path):
    m = gptjax_model("gpt2")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GptjaxError, match="already exists and is not empty"):
        hf.export_hf(Config(model=m), random_params(m), char_tokenizer(m.vocab_size), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    m = gptjax_model("gpt2")

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(export, "write_json", disk_full)
    with pytest.raises(OSError):
        hf.export_hf(Config(model=m), random_params(m), char_tokenizer(m.vocab_size), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
