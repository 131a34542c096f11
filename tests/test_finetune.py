"""Finetuning on the shared trainer: records and splits, SFT loss masks and packing, the classifier head, freeze
policies and partial checkpoints, LoRA merge/export, DPO reference choices, resume after SIGKILL, bad input.
(Cross-checks against peft / trl / transformers: tests/test_finetune_refs.py.)"""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GCS_BUCKET, GPT2_FIXTURES, REPO, run_cli

from gptjax import config as config_lib
from gptjax.errors import GptjaxError

FIXTURES = REPO / "tests" / "fixtures" / "finetune"
TASKS = {"classify": "sms_spam", "sft": "instruction", "dpo": "preference"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, cache_dir) -> Path:
    """A random-init GPT-2-BPE model (vocab 50257, block 96) as a gptjax export: the model finetunes start from."""
    import flax.linen as nn

    from gptjax import export
    from gptjax.api import LM
    from gptjax.data.tokenizer import Gpt2BpeAdapter
    from gptjax.model.transformer import Transformer, init_params

    model_cfg = config_lib.ModelConfig(vocab_size=50257, block_size=96, n_layer=2, n_head=2, d_model=32)
    cfg = config_lib.Config(name="finetune_base", model=model_cfg)
    out = tmp_path_factory.mktemp("finetune_base") / "base"
    export.export_native(LM(cfg, nn.unbox(init_params(Transformer(model_cfg), 0, 8)),
                            Gpt2BpeAdapter.from_dir(GPT2_FIXTURES)), out)
    return out


def finetune_config(
    base: Path, objective: str, steps: int = 6, model: dict | None = None, **finetune
) -> config_lib.Config:
    model_cfg = config_lib.ModelConfig(**{"vocab_size": 50257, "block_size": 96, "n_layer": 2, "n_head": 2,
                                          "d_model": 32, "num_classes": 2 if objective == "classify" else 0,
                                          **(model or {})})
    train = config_lib.TrainConfig(objective=objective, init_from=str(base), steps=steps, batch_size=4, lr=1e-3,
                                   min_lr=1e-4, warmup_steps=1, eval_every=3, checkpoint_every=3, log_every=1,
                                   tensorboard=False)
    ft = config_lib.FinetuneConfig(task=TASKS[objective], data=str(FIXTURES), **finetune)
    cfg = config_lib.Config(name=f"ft_{objective}", model=model_cfg, train=train, finetune=ft)
    config_lib.validate(cfg)
    return cfg


def train_run(cfg: config_lib.Config, workdir: Path) -> dict:
    from gptjax.train.loop import train

    return train(cfg, workdir, show_progress=False)


def tokenizer():
    from gptjax.data.tokenizer import Gpt2BpeAdapter

    return Gpt2BpeAdapter.from_dir(GPT2_FIXTURES)


# ---- records and splits -----------------------------------------------------------------------------------------


def test_spam_split_is_class_balanced_70_10_20():
    from gptjax.finetune import records

    splits = records.split_records("sms_spam", records.records_path("sms_spam", str(FIXTURES)))
    every = [r for split in splits.values() for r in split]
    n_spam = sum(r["label"] == "spam" for r in every)
    assert n_spam == len(every) - n_spam  # balanced: as many ham sampled as there are spam
    assert (len(splits["train"]), len(splits["val"])) == (int(len(every) * 0.7), int(len(every) * 0.1))
    assert len(splits["test"]) == len(every) - len(splits["train"]) - len(splits["val"])
    assert splits == records.split_records("sms_spam", records.records_path("sms_spam", str(FIXTURES)))


def test_instruction_split_is_85_train_10_test_rest_val_in_file_order():
    from gptjax.finetune import records

    path = records.records_path("instruction", str(FIXTURES))
    every = records.read_instruction(path)
    splits = records.split_records("instruction", path)
    assert splits["train"] == every[:34] and splits["test"] == every[34:38] and splits["val"] == every[38:]


@pytest.mark.parametrize("content,message", [
    ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', "record 1 has no usable 'output' (missing)"),
    ('[{"instruction": "a", "output": 3}]', "record 0 has no usable 'output' (int"),
    ('{"instruction": "a"}', "holds a JSON dict, not a list"),
    ('[{"messages": [{"role": "user", "content": "hi"}]}]', "record 0 has no assistant message"),
])
def test_a_record_missing_a_field_names_the_record_and_the_field(tmp_path, content, message):
    from gptjax.finetune import records

    path = tmp_path / "records.json"
    path.write_text(content)
    with pytest.raises(GptjaxError, match=None) as err:
        records.read_instruction(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_a_label_set_with_one_class_and_a_malformed_tsv_line_are_errors(tmp_path):
    from gptjax.finetune import records

    one_class = tmp_path / "one.jsonl"
    one_class.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n')
    with pytest.raises(GptjaxError, match="every record has the label 'x'; classification needs at least two"):
        records.label_names(records.read_labelled(one_class, "classification"), (), one_class)
    tsv = tmp_path / "SMSSpamCollection"
    tsv.write_text("ham\thello\nno tab here\n")
    with pytest.raises(GptjaxError, match=r"SMSSpamCollection:2: expected 'LABEL<TAB>TEXT'"):
        records.read_labelled(tsv, "sms_spam")


# ---- SFT: what the loss counts, packing ------------------------------------------------------------------------


def test_sft_loss_counts_exactly_the_response_tokens_and_the_closing_eot():
    from gptjax.finetune import records
    from gptjax.finetune.batches import RecordEncoder, sft_sequences

    tok = tokenizer()
    items = records.read_instruction(records.records_path("instruction", str(FIXTURES)))[:6]
    seqs = sft_sequences(items, RecordEncoder("alpaca", tok), 10_000, "truncate", "train")
    for record, seq in zip(items, seqs):
        response = tok.encode(record["output"]) + [tok.eot_id]
        targets = seq.ids[1:][seq.weights > 0]
        assert seq.weights.sum() == len(response)
        assert targets.tolist() == response  # exactly the response tokens, in order, then <|endoftext|>
        assert seq.weights[: len(seq.ids) - 1 - len(response)].sum() == 0  # nothing of the prompt


def test_packed_rows_give_the_same_summed_loss_as_padded_rows(base_dir):
    """Packed rows restart positions per record (rope here: positions enter only through the packed layout)."""
    import flax.linen as nn

    import gptjax
    from gptjax.finetune import records
    from gptjax.finetune.batches import RecordEncoder, packed_rows, padded_sequences, sft_sequences
    from gptjax.model.transformer import Transformer, init_params
    from gptjax.train.objectives import NextTokenLM

    lm = gptjax.load(base_dir)
    tok = lm.tokenizer
    items = records.read_instruction(records.records_path("instruction", str(FIXTURES)))[:8]
    seqs = sft_sequences(items, RecordEncoder("alpaca", tok), 97, "truncate", "train")
    objective = NextTokenLM(name="sft")
    model = Transformer(dataclasses.replace(lm.config, block_size=256, position="rope"))  # rows of 256 hold several
    params = nn.unbox(init_params(model, 0, 8))
    padded = jax.tree_util.tree_map(jnp.asarray, padded_sequences(seqs, 256))
    packed = jax.tree_util.tree_map(jnp.asarray, packed_rows(seqs, np.arange(len(seqs)), 256))
    assert packed["tokens"].shape[0] < padded["tokens"].shape[0]  # several records share a row
    _, padded_sums = objective(params, None, model, padded, None)
    _, packed_sums = objective(params, None, model, packed, None)
    assert float(packed_sums["weight"]) == float(padded_sums["weight"]) == sum(float(s.weights.sum()) for s in seqs)
    np.testing.assert_allclose(float(packed_sums["loss"]), float(padded_sums["loss"]), rtol=1e-5)


def test_an_over_long_record_is_truncated_or_skipped_and_counted(capfd):
    from gptjax.finetune import records
    from gptjax.finetune.batches import RecordEncoder, sft_sequences

    tok = tokenizer()
    items = records.read_instruction(records.records_path("instruction", str(FIXTURES)))[:10]
    kept = sft_sequences(items, RecordEncoder("alpaca", tok), 60, "truncate", "train")
    truncated_note = capfd.readouterr().err
    skipped = sft_sequences(items, RecordEncoder("alpaca", tok), 60, "skip", "train")
    skipped_note = capfd.readouterr().err
    assert all(len(s.ids) <= 60 for s in kept) and all(len(s.ids) <= 60 for s in skipped)
    assert len(skipped) < len(kept) <= len(items)
    assert "of 10 train records are longer than 60 tokens" in truncated_note and "truncated" in truncated_note
    assert f"{len(items) - len(skipped)} skipped" in skipped_note


# ---- the classifier head ---------------------------------------------------------------------------------------


def test_the_classifier_head_sees_the_last_real_token_whatever_follows(base_dir):
    import flax.linen as nn

    from gptjax.model.losses import class_logits
    from gptjax.model.transformer import Transformer, init_params

    model_cfg = dataclasses.replace(config_lib.ModelConfig(vocab_size=50257, block_size=96, n_layer=2, n_head=2,
                                                           d_model=32), num_classes=3)
    model = Transformer(model_cfg)
    params = nn.unbox(init_params(model, 0, 8))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50257, (3, 40)).astype(np.int32)
    lengths = np.array([7, 40, 23], np.int32)
    junk = tokens.copy()
    for row, n in enumerate(lengths):
        junk[row, n:] = rng.integers(0, 50257, 40 - n)
    wide = np.concatenate([tokens, np.zeros((3, 24), np.int32)], axis=1)
    reference = np.asarray(class_logits(params, model, tokens, lengths))
    np.testing.assert_allclose(np.asarray(class_logits(params, model, junk, lengths)), reference, atol=1e-6)
    np.testing.assert_allclose(np.asarray(class_logits(params, model, wide, lengths)), reference, atol=1e-6)
    single = np.asarray(class_logits(params, model, tokens[:1, :7], np.array([7], np.int32)))
    np.testing.assert_allclose(single, reference[:1], atol=1e-6)


# ---- freeze policies, partial checkpoints, LoRA ----------------------------------------------------------------


def flat(params) -> dict[str, np.ndarray]:
    from gptjax.checkpoint import param_key

    return {param_key(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_frozen_params_stay_bit_identical_and_only_trainable_ones_are_checkpointed(base_dir, tmp_path):
    import gptjax

    workdir = tmp_path / "spam"
    summary = train_run(finetune_config(base_dir, "classify", freeze="last_n_blocks:1"), workdir)
    assert summary["step"] == 6 and 0 <= summary["val_acc"] <= 1
    base, tuned = flat(gptjax.load(base_dir).params), flat(gptjax.load(workdir).params)
    trained = {"layer_1", "norm_f", "classifier_kernel", "classifier_bias"}
    for key, value in tuned.items():
        if key.split("/")[0] in trained:
            if key != "classifier_bias" and key in base:
                assert not np.array_equal(value, base[key]), f"{key} should have trained"
        else:
            np.testing.assert_array_equal(value, base[key], err_msg=f"{key} is frozen but changed")
    tree = json.loads((workdir / "checkpoints" / "6" / "params" / "_METADATA").read_text())["tree_metadata"]
    saved = {key.strip("()',") for key in tree}
    assert saved == {k for k in tuned if k.split("/")[0] in trained}


def test_lora_trains_only_adapters_and_the_export_merges_them(base_dir, tmp_path):
    import gptjax
    from gptjax.model.transformer import Transformer

    lora = {"lora_rank": 4, "lora_alpha": 8.0, "lora_targets": ("q", "v", "mlp")}
    workdir = tmp_path / "lora"
    train_run(finetune_config(base_dir, "sft", model=lora, freeze="lora"), workdir)
    base, tuned = flat(gptjax.load(base_dir).params), gptjax.load(workdir)
    adapters = [k for k in flat(tuned.params) if k.endswith(("lora_a", "lora_b"))]
    assert len(adapters) == 2 * 2 * (2 + 2)  # 2 layers x (query, value, fc, proj) x (A, B)
    for key, value in flat(tuned.params).items():
        if key in base:
            np.testing.assert_array_equal(value, base[key], err_msg=f"{key} is frozen under LoRA but changed")
        else:
            assert key in adapters and (key.endswith("lora_a") or np.abs(value).max() > 0), key
    out = tmp_path / "export"
    proc = run_cli(["export", "--workdir", str(workdir), "--format", "safetensors", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-1500:]
    merged = gptjax.load(out)
    assert merged.config.lora_rank == 0 and not any(k.endswith("lora_a") for k in flat(merged.params))
    tokens = np.arange(1, 41, dtype=np.int32)[None] * 997 % 50257
    unmerged_logits = Transformer(tuned.config).apply({"params": tuned.params}, tokens)
    np.testing.assert_allclose(merged.logits(tokens), np.asarray(unmerged_logits)[..., :50257], atol=1e-5)


def test_lora_checkpoints_are_a_small_fraction_of_a_full_finetune(base_dir, tmp_path):
    def params_bytes(workdir: Path) -> int:
        return sum(p.stat().st_size for p in (workdir / "checkpoints" / "3" / "params").rglob("*") if p.is_file())

    full, lora = tmp_path / "full", tmp_path / "lora"
    train_run(finetune_config(base_dir, "sft", steps=3), full)
    train_run(finetune_config(base_dir, "sft", steps=3, model={"lora_rank": 2}, freeze="lora"), lora)
    assert params_bytes(lora) < params_bytes(full) / 20


# ---- DPO: the reference ----------------------------------------------------------------------------------------


def test_dpo_with_a_precomputed_reference_equals_a_live_one(base_dir, tmp_path):
    stored = train_run(finetune_config(base_dir, "dpo", steps=4, reference="precomputed"), tmp_path / "stored")
    live = train_run(finetune_config(base_dir, "dpo", steps=4, reference="live"), tmp_path / "live")
    assert (tmp_path / "stored" / "reference_logprobs.npz").is_file()
    for key in ("loss", "val_loss", "val_reward_margin", "val_reward_accuracy"):
        assert stored[key] == pytest.approx(live[key], rel=1e-4, abs=1e-6), key
    assert stored["start_val_loss"] == pytest.approx(np.log(2), abs=1e-6)  # policy = reference at step 0
    assert stored["start_val_reward_margin"] == pytest.approx(0.0, abs=1e-6)


def test_dpo_on_gs_from_a_gs_base_caches_its_reference_there_and_trains_as_locally(base_dir, tmp_path, gcs):
    base = f"gs://{GCS_BUCKET}/finetune/base"
    gcs.put(str(base_dir), base, recursive=True)
    local = train_run(finetune_config(base_dir, "dpo", steps=3, reference="precomputed"), tmp_path / "local")
    workdir = f"gs://{GCS_BUCKET}/finetune/dpo"
    remote = train_run(finetune_config(base, "dpo", steps=3, reference="precomputed"), workdir)
    gcs.invalidate_cache()
    assert gcs.exists(f"{workdir}/reference_logprobs.npz")
    for key in ("loss", "val_loss", "val_reward_margin"):
        assert remote[key] == local[key], key


def test_a_dpo_run_without_a_reference_is_refused():
    with pytest.raises(GptjaxError, match="train.objective='dpo' finetunes a trained model: set train.init_from="
                                          r"RUN_OR_EXPORT \(the DPO reference is that model\)"):
        config_lib.validate(dataclasses.replace(
            config_lib.Config(), model=config_lib.ModelConfig(), finetune=config_lib.FinetuneConfig(task="preference"),
            train=config_lib.TrainConfig(objective="dpo")))


# ---- results, API, CLI -----------------------------------------------------------------------------------------


def test_eval_of_a_classifier_reports_its_test_split_and_lm_classify_names_classes(base_dir, tmp_path):
    import gptjax

    workdir = tmp_path / "spam"
    train_run(finetune_config(base_dir, "classify", freeze="lora", model={"lora_rank": 2}), workdir)
    out = tmp_path / "r.json"
    proc = run_cli(["eval", "--workdir", str(workdir), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-1500:]
    result = json.loads(out.read_text())["results"]["sms_spam"]
    assert result["split"] == "test" and result["n"] > 0 and 0 <= result["acc"] <= 1 and result["acc_stderr"] > 0
    lm = gptjax.load(workdir)
    assert lm.cfg.finetune.labels == ("ham", "spam")
    texts = ["Free entry! Win cash now, text WIN to 80086", "ok see you at 5", "hi"]
    predicted = lm.classify(texts)
    probabilities = lm.class_probabilities(texts)
    assert set(predicted) <= {"ham", "spam"}
    assert predicted == [("ham", "spam")[i] for i in probabilities.argmax(-1)]
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


def test_sft_writes_held_out_samples_and_before_after_losses(base_dir, tmp_path):
    workdir = tmp_path / "sft"
    summary = train_run(finetune_config(base_dir, "sft", steps=6, samples=3, max_new_tokens=8), workdir)
    lines = [json.loads(line) for line in (workdir / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(
        sample["prompt"].endswith("### Response:\n") and sample["reference"] for sample in lines
    )
    assert summary["val_loss"] < summary["start_val_loss"]
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert logged[0]["step"] == 0 and logged[0]["val_loss"] == summary["start_val_loss"]


@pytest.mark.parametrize("change,message", [
    ({"init_from": "/no/such/run"}, "train.init_from=/no/such/run: /no/such/run is neither a training workdir"),
    ({"model": {"d_model": 64}}, "does not fit this model: param ['embedding'] is shape (50304, 32)"),
])
def test_init_from_nothing_or_an_incompatible_model_is_one_clear_error(base_dir, tmp_path, change, message):
    cfg = finetune_config(base_dir, "sft", model=change.get("model"))
    if "init_from" in change:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=change["init_from"]))
    with pytest.raises(GptjaxError) as err:
        train_run(cfg, tmp_path / "run")
    assert message in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.parametrize("model,freeze,message", [
    ({"lora_rank": 4, "lora_targets": ("q", "z")}, "lora", "model.lora_targets has z, not among the LoRA targets"),
    ({"lora_rank": 4}, "none", "finetune.freeze='lora' and model.lora_rank > 0 go together"),
    ({}, "last_n_blocks:5", "finetune.freeze=last_n_blocks:5 names more blocks than model.n_layer=2"),
    ({}, "some", "finetune.freeze='some' is not none, all, last_n_blocks:N or lora"),
])
def test_bad_finetune_settings_are_config_errors(base_dir, model, freeze, message):
    with pytest.raises(GptjaxError) as err:
        finetune_config(base_dir, "sft", model=model, freeze=freeze)
    assert message in str(err.value)


# ---- resume after SIGKILL --------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective,extra", [
    ("classify", {"finetune": {"freeze": "lora"}, "model": {"lora_rank": 2}}),
    ("sft", {"finetune": {"pack": True}}),
    ("dpo", {"finetune": {"reference": "live"}}),
])
def test_resume_after_sigkill_is_bit_identical_for_each_objective(base_dir, tmp_path, objective, extra):
    import gptjax

    cfg = finetune_config(base_dir, objective, steps=6, model=extra.get("model"), **extra.get("finetune", {}))
    config_file = tmp_path / "config.json"
    config_file.write_text(config_lib.to_json(cfg))
    straight = tmp_path / "straight"  # through the CLI too: it splits the CPU into the same devices as the resumed run
    proc = run_cli(["train", "--config", str(config_file), "--workdir", str(straight)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = tmp_path / "resumed"
    cmd = [sys.executable, "tests/faults.py", "--kill-after-step", "4", "--", "--config", str(config_file),
           "--workdir", str(resumed)]
    killed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    proc = run_cli(["train", "--config", str(config_file), "--workdir", str(resumed)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from step 3" in proc.stderr
    a, b = gptjax.load(straight), gptjax.load(resumed)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    def losses(workdir):
        return {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
                if "loss" in r and "val_loss" not in r}
    assert losses(straight) == losses(resumed)


# ---- the chat template's special tokens -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentencepiece_base(tmp_path_factory) -> Path:
    """A random-init model whose sentencepiece vocabulary (384) exactly fills its padded table, so the chat
    template's three added tokens widen the embedding (387 -> 512 rows)."""
    import flax.linen as nn

    from gptjax import export
    from gptjax.api import LM
    from gptjax.data.tokenizer import SentencePieceTokenizer
    from gptjax.finetune import records
    from gptjax.model.transformer import Transformer, init_params

    items = records.read_instruction(records.records_path("instruction", str(FIXTURES)))
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in items] * 3
    tok = SentencePieceTokenizer.train(texts, 384)
    model_cfg = config_lib.ModelConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=2, n_head=2, d_model=32)
    out = tmp_path_factory.mktemp("sp_base") / "base"
    export.export_native(LM(config_lib.Config(name="sp_base", model=model_cfg),
                            nn.unbox(init_params(Transformer(model_cfg), 0, 8)), tok), out)
    return out


def test_chat_role_headers_are_added_special_tokens_and_the_base_rows_carry_over(sentencepiece_base, tmp_path):
    import gptjax
    from gptjax.finetune.batches import load_finetune_data
    from gptjax.finetune.setup import finetune_tokenizer
    from gptjax.finetune.templates import CHAT_TOKENS

    base = gptjax.load(sentencepiece_base)
    cfg = finetune_config(sentencepiece_base, "sft", steps=4, model={"vocab_size": 0, "lora_rank": 2},
                          freeze="lora", template="chat")
    tok = finetune_tokenizer(cfg, base)
    assert tok.vocab_size == base.tokenizer.vocab_size + 3 == 387
    special = [tok.encode(t) for t in CHAT_TOKENS]
    assert special == [[384], [385], [386]] and tok.decode([385, *tok.encode(" hi"), 386]) == "<|user|> hi<|assistant|>"
    data = load_finetune_data(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=387)), tok)
    row = data.splits["train"].arrays["tokens"][0]
    assert 385 in row and 386 in row  # one id per role header in the training rows
    workdir = tmp_path / "chat"
    train_run(cfg, workdir)
    tuned = gptjax.load(workdir)  # a partial checkpoint: adapters + the widened embedding, the rest from the base
    assert tuned.config.vocab_size == 387 and tuned.params["embedding"].shape == (512, 32)
    assert tuned.tokenizer.encode("<|assistant|>") == [386]
    np.testing.assert_array_equal(np.asarray(tuned.params["layer_0"]["attn"]["query"]["kernel"]),
                                  np.asarray(base.params["layer_0"]["attn"]["query"]["kernel"]))
    out = tmp_path / "hf"
    proc = run_cli(["export", "--workdir", str(workdir), "--format", "hf", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-1500:]
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(out))
    assert hf_tok.convert_tokens_to_ids("<|assistant|>") == 386


def test_with_source_rows_copies_the_base_vocabulary_and_keeps_added_rows():
    from gptjax.train.run import grown_vocabulary, with_source_rows

    fresh, source = np.zeros((8, 3), np.float32), np.ones((5, 3), np.float32)
    assert grown_vocabulary("['embedding']", (5, 3), (8, 3)) and not grown_vocabulary("['embedding']", (5, 4), (8, 3))
    assert not grown_vocabulary("['layer_0']", (5, 3), (8, 3))
    out = with_source_rows(fresh, source, "['embedding']")
    assert out[:5].sum() == 15 and out[5:].sum() == 0
    head = with_source_rows(np.zeros((3, 8), np.float32), np.ones((3, 5), np.float32), "['lm_head']")
    assert head[:, :5].sum() == 15 and head[:, 5:].sum() == 0
