"""gptjax's finetuning code against the reference libraries: LoRA against peft, merged LoRA against the adapted model,
the DPO loss and rewards against trl, and per-sequence response log-probs against transformers.

Every model is built locally with random weights (nothing is downloaded); adapters get random non-zero A and B
(B is zero at init, which would make any LoRA check vacuous)."""
from __future__ import annotations

import collections
import dataclasses
import types

import jax
import numpy as np
import pytest
from conftest import GPT2_FIXTURES
from test_interop_hf import gptjax_model, hf_logits, lm_for, load_hf, max_abs_diff, random_ids, random_params

import gptjax
from gptjax.finetune.batches import RecordEncoder, encode_pieces, padded_sequences, preference_pairs, row_width
from gptjax.finetune.templates import prompt_pieces
from gptjax.interop import hf
from gptjax.model.lora import ADAPTER_NAMES, merge_lora
from gptjax.model.losses import dpo_terms, sequence_logprobs

LOGIT_TOLERANCE = 1e-5
DPO_TOLERANCE = 1e-6
DPO_E2E_TOLERANCE = 1e-5
LOGPROB_TOLERANCE = 1e-4
LORA = dict(lora_rank=4, lora_alpha=8.0, lora_targets=("q", "k", "v", "o", "mlp"))
# weights ~ N(0, 0.1²): logits up to ~3.5 with the adapters moving them by ~1. At test_interop_hf's 0.2 the logits
# reach ~7 and float32 rounding alone (peft in float32 vs peft in float64) is 1.7e-5, above LOGIT_TOLERANCE.
PARAM_STD = 0.1


def lora_model(family: str, **overrides):
    return gptjax_model(family, **{"vocab_size": 300, "d_model": 64, **LORA, **overrides})


def without_adapters(params: dict) -> dict:
    """The base model's params: every lora_a / lora_b leaf dropped."""
    if not isinstance(params, dict):
        return params
    return {k: without_adapters(v) for k, v in params.items() if k not in ADAPTER_NAMES}


def export_base(m, params: dict, out, tokenizer=None):
    """The base model (adapters dropped, config without LoRA) exported to HF and loaded back with transformers."""
    base = dataclasses.replace(m, lora_rank=0)
    lm = lm_for(base, without_adapters(params), tokenizer)
    hf.export_hf(lm.cfg, lm.params, lm.tokenizer, out)
    return load_hf(out)


def set_lora(module, a_rin: np.ndarray, b_outr: np.ndarray) -> None:
    """Writes peft's default adapter of a LoRA-wrapped module: lora_A.weight [r, in], lora_B.weight [out, r]."""
    import torch

    lora_a, lora_b = module.lora_A["default"].weight, module.lora_B["default"].weight
    assert tuple(lora_a.shape) == a_rin.shape and tuple(lora_b.shape) == b_outr.shape
    with torch.no_grad():
        lora_a.copy_(torch.from_numpy(np.ascontiguousarray(a_rin, np.float32)))
        lora_b.copy_(torch.from_numpy(np.ascontiguousarray(b_outr, np.float32)))


def adapter_AB(module: dict) -> tuple[np.ndarray, np.ndarray]:
    """A gptjax Dense's adapter as peft's (lora_A.weight [r, in], lora_B.weight [out, r]), [heads, head_dim] axes
    flattened in the order HF's q/k/v/o weights use (hf._llama_layer_tensors / hf._gpt2_layer_tensors)."""
    a, b = np.asarray(module["lora_a"]), np.asarray(module["lora_b"])
    rank = a.shape[-1]
    return a.reshape(-1, rank).T, b.reshape(rank, -1).T


# ---------------------------------------------------------------- 1. LoRA = peft

LLAMA_MODULES = {"self_attn": {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "o_proj"},
                 "mlp": {"gate": "gate_proj", "up": "up_proj", "proj": "down_proj"}}


def llama_peft_model(m, params: dict, out, tokenizer=None):
    """peft's LoRA twin of a Llama-family gptjax model with adapters on every target: the base exported to HF,
    wrapped by get_peft_model with the same rank and alpha, gptjax's A and B copied into peft's adapters."""
    from peft import LoraConfig, get_peft_model

    assert set(m.lora_targets) == {"q", "k", "v", "o", "mlp"}
    model = export_base(m, params, out, tokenizer)
    peft_model = get_peft_model(model, LoraConfig(
        r=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=0.0, bias="none",
        target_modules=[t for names in LLAMA_MODULES.values() for t in names.values()])).eval()
    for i, layer in enumerate(peft_model.base_model.model.model.layers):
        ours_layer = hf.layer_params(params, m, i)
        for hf_block, names in LLAMA_MODULES.items():
            block = ours_layer["attn" if hf_block == "self_attn" else "mlp"]
            for name, theirs in names.items():
                module = getattr(getattr(layer, hf_block), theirs)
                assert module.scaling["default"] == m.lora_alpha / m.lora_rank
                set_lora(module, *adapter_AB(block[name]))
    return peft_model


def test_llama_lora_matches_peft(tmp_path):
    """A Llama-family model with rank-4 adapters on q, k, v, o and every MLP matmul (GQA: k/v are narrower) gives
    peft's logits when its base is exported to HF and its A, B are copied into peft's adapters."""
    pytest.importorskip("peft")
    m = lora_model("llama", n_kv_head=2)
    params = random_params(m, seed=11, std=PARAM_STD)
    ids = random_ids(m.vocab_size, (2, 33), seed=5)
    base_logits = lm_for(dataclasses.replace(m, lora_rank=0), without_adapters(params)).logits(ids)
    ours = lm_for(m, params).logits(ids)

    peft_model = llama_peft_model(m, params, tmp_path / "hf")
    theirs = hf_logits(peft_model, ids)
    diff = max_abs_diff(ours, theirs)
    effect = max_abs_diff(ours, base_logits)
    print(f"llama LoRA vs peft: max |logit diff| = {diff:.2e} (adapters move the logits by up to {effect:.2f})")
    assert effect > 0.1  # the adapters matter
    assert diff <= LOGIT_TOLERANCE
    with peft_model.disable_adapter():  # and peft's base is the exported base
        assert max_abs_diff(hf_logits(peft_model, ids), base_logits) <= LOGIT_TOLERANCE

    # `gptjax export --format hf` of a LoRA model: LM.with_lora_merged folds the adapters, the export stands alone
    lm = lm_for(m, params).with_lora_merged()
    assert lm.config.lora_rank == 0 and lm.cfg.finetune.freeze == "none"
    hf.export_hf(lm.cfg, lm.params, lm.tokenizer, tmp_path / "merged")
    exported = hf_logits(load_hf(tmp_path / "merged"), ids)
    merged_diff = max_abs_diff(ours, exported)
    print(f"llama LoRA merged + exported vs adapted gptjax: max |logit diff| = {merged_diff:.2e}")
    assert merged_diff <= LOGIT_TOLERANCE


def test_gpt2_lora_matches_peft_on_fused_c_attn(tmp_path):
    """GPT-2 fuses q, k, v into one Conv1D (c_attn: [D, 3W], q | k | v columns). gptjax's three rank-r adapters on
    query/key/value are one rank-3r peft adapter on c_attn: A = [A_q; A_k; A_v] stacked along the rank, B block
    diagonal (q's rows of the output read only A_q's ranks, ...), and lora_alpha 3·alpha so that alpha/rank is the
    same. o (attn.c_proj) and the MLP (mlp.c_fc, mlp.c_proj) map one to one at rank r."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    m = lora_model("gpt2")
    params = random_params(m, seed=12, std=PARAM_STD)
    ids = random_ids(m.vocab_size, (2, 33), seed=6)
    ours = lm_for(m, params).logits(ids)
    base_logits = lm_for(dataclasses.replace(m, lora_rank=0), without_adapters(params)).logits(ids)

    r, alpha = m.lora_rank, m.lora_alpha
    model = export_base(m, params, tmp_path / "hf")
    peft_model = get_peft_model(model, LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none", fan_in_fan_out=True,
        target_modules=["c_attn", "c_proj", "c_fc"], rank_pattern={"c_attn": 3 * r},
        alpha_pattern={"c_attn": 3 * alpha})).eval()
    for i, block in enumerate(peft_model.base_model.model.transformer.h):
        layer = hf.layer_params(params, m, i)
        fused = [adapter_AB(layer["attn"][name]) for name in hf.QKV]
        a_fused = np.concatenate([a for a, _ in fused])  # [3r, D]
        width = fused[0][1].shape[0]
        b_fused = np.zeros((3 * width, 3 * r), np.float32)
        for j, (_, b) in enumerate(fused):
            b_fused[j * width:(j + 1) * width, j * r:(j + 1) * r] = b
        set_lora(block.attn.c_attn, a_fused, b_fused)
        assert block.attn.c_attn.scaling["default"] == alpha / r
        set_lora(block.attn.c_proj, *adapter_AB(layer["attn"]["out"]))
        set_lora(block.mlp.c_fc, *adapter_AB(layer["mlp"]["fc"]))
        set_lora(block.mlp.c_proj, *adapter_AB(layer["mlp"]["proj"]))

    theirs = hf_logits(peft_model, ids)
    diff = max_abs_diff(ours, theirs)
    effect = max_abs_diff(ours, base_logits)
    print(f"gpt2 LoRA vs peft (fused c_attn, rank {3 * r}): max |logit diff| = {diff:.2e} "
          f"(adapters move the logits by up to {effect:.2f})")
    assert effect > 0.1
    assert diff <= LOGIT_TOLERANCE


# ---------------------------------------------------------------- 2. merged = unmerged


@pytest.mark.parametrize("family,scan", [("llama", True), ("llama", False), ("gpt2", True), ("gpt2", False)])
def test_merged_lora_matches_adapted_model(family, scan):
    """merge_lora's params in the LoRA-free config it returns give the adapted model's logits (scanned layers carry a
    leading layer axis on kernel, A and B), and are exactly the base model's param tree."""
    m = lora_model(family, scan_layers=scan, n_kv_head=2 if family == "llama" else 0)
    params = random_params(m, seed=13, std=PARAM_STD)
    merged_params, merged_cfg = merge_lora(params, m)
    assert merged_cfg == dataclasses.replace(m, lora_rank=0)
    base_params = without_adapters(params)
    assert jax.tree_util.tree_structure(merged_params) == jax.tree_util.tree_structure(base_params)
    for ours, base in zip(jax.tree_util.tree_leaves(merged_params), jax.tree_util.tree_leaves(base_params)):
        assert np.asarray(ours).shape == np.asarray(base).shape and np.asarray(ours).dtype == np.float32

    ids = random_ids(m.vocab_size, (2, 33), seed=7)
    adapted = lm_for(m, params).logits(ids)
    merged = lm_for(merged_cfg, merged_params).logits(ids)
    base = lm_for(merged_cfg, base_params).logits(ids)
    diff, effect = max_abs_diff(adapted, merged), max_abs_diff(adapted, base)
    print(f"{family} scan={scan}: merged vs adapted max |logit diff| = {diff:.2e} (LoRA effect {effect:.2f})")
    assert effect > 0.1
    assert diff <= LOGIT_TOLERANCE


# ---------------------------------------------------------------- 3. DPO = trl


def trl_dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, label_smoothing: float,
            loss_type: str) -> dict[str, float]:
    """trl 1.16's DPO loss and rewards from trl's own code: `DPOTrainer._compute_loss` (the loss is inlined there;
    trl 1.16 has no standalone dpo_loss) called unbound on a stand-in trainer carrying just the attributes it reads,
    with precomputed reference log-probs, and a stand-in model whose per-token log-probs (what trl's fused LM head
    returns: 0 at label -100) sum to the given policy log-probs (scalars: one pair; arrays: a batch of pairs). trl
    returns the batch-mean loss and logs batch-mean rewards, so one pair per call gives per-pair values."""
    import torch
    from trl.trainer.dpo_trainer import DPOTrainer

    dtype = torch.float64
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = (
        np.atleast_1d(np.asarray(x, np.float64)) for x in (policy_chosen, policy_rejected, ref_chosen, ref_rejected))
    n, seq = len(policy_chosen), 4
    completion_mask = torch.tensor([[0, 0, 1, 1]] * 2 * n)
    log_probs = torch.zeros((2 * n, seq - 1), dtype=dtype)
    log_probs[:, 1] = torch.from_numpy(np.concatenate([policy_chosen, policy_rejected]))  # one target carries it
    zeros = torch.zeros((2 * n, seq - 1), dtype=dtype)
    outputs = types.SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                                    is_top1=torch.zeros((2 * n, seq - 1), dtype=torch.bool))
    identity = lambda x: x  # noqa: E731
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=False), ref_model=None,
        accelerator=types.SimpleNamespace(device="cpu", gather=identity, gather_for_metrics=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
        use_weighting=False, _metrics={"eval": collections.defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
        args=types.SimpleNamespace())
    inputs = {"input_ids": torch.ones((2 * n, seq), dtype=torch.long), "attention_mask": torch.ones((2 * n, seq)),
              "completion_mask": completion_mask, "ref_chosen_logps": torch.from_numpy(ref_chosen),
              "ref_rejected_logps": torch.from_numpy(ref_rejected)}
    loss = DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, return_outputs=False)
    metrics = trainer._metrics["eval"]
    return {"loss": float(loss), "reward_chosen": metrics["rewards/chosen"][0],
            "reward_rejected": metrics["rewards/rejected"][0], "reward_margin": metrics["rewards/margins"][0],
            "reward_accuracy": metrics["rewards/accuracies"][0]}


DPO_SETTINGS = [(0.1, 0.0), (0.5, 0.0), (2.0, 0.0), (0.1, 0.1), (0.5, 0.25), (1.0, 0.4)]


@pytest.mark.parametrize("beta,label_smoothing", DPO_SETTINGS)
def test_dpo_terms_match_trl(beta, label_smoothing):
    """dpo_terms' per-pair loss and implicit rewards equal trl's on the same per-sequence log-probs (summed response
    log-probs of realistic size, pairs where chosen wins, loses and ties), computed in float64 on both sides.

    label_smoothing = 0 is trl's `sigmoid` loss. trl 1.16's sigmoid has no label-smoothing term (DPOConfig documents
    label_smoothing for robust DPO and EXO only); gptjax's smoothed loss is the conservative-DPO (cDPO) form
    -(1-e)·log σ(β·Δ) - e·log σ(-β·Δ) (trl's sigmoid loss in earlier releases), which trl 1.16 computes as its `aot`
    loss on a one-pair batch (sorting one log-ratio is the identity, leaving Δ). The test also pins that trl's
    sigmoid ignores label_smoothing, and that gptjax's smoothed loss is not trl's `robust` one."""
    pytest.importorskip("trl")
    rng = np.random.default_rng(int(beta * 100 + label_smoothing * 1000))
    n = 12
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = -rng.uniform(5, 120, (4, n))
    policy_rejected[0] = policy_chosen[0] + ref_rejected[0] - ref_chosen[0]  # a tie (Δ = 0)
    with jax.enable_x64(True):
        ours = {k: np.asarray(v) for k, v in dpo_terms(*(jax.numpy.asarray(x) for x in (
            policy_chosen, policy_rejected, ref_chosen, ref_rejected)), beta, label_smoothing).items()}
    assert ours["loss"].dtype == np.float64
    loss_type = "sigmoid" if label_smoothing == 0.0 else "aot"
    worst = 0.0
    for i in range(n):
        args = (policy_chosen[i], policy_rejected[i], ref_chosen[i], ref_rejected[i])
        theirs = trl_dpo(*args, beta, label_smoothing, loss_type)
        for key, value in theirs.items():
            if key == "reward_accuracy" and i == 0:
                continue  # a tie: the rewards are equal up to float64 rounding, so "chosen > rejected" is noise
            worst = max(worst, abs(float(ours[key][i]) - value))
            assert abs(float(ours[key][i]) - value) <= DPO_TOLERANCE, (i, key, float(ours[key][i]), value)
        if label_smoothing > 0.0:
            assert trl_dpo(*args, beta, label_smoothing, "sigmoid")["loss"] == pytest.approx(
                trl_dpo(*args, beta, 0.0, "sigmoid")["loss"], abs=1e-12)
            if i > 0:  # at a tie every form is log 2
                assert abs(trl_dpo(*args, beta, label_smoothing, "robust")["loss"] - float(ours["loss"][i])) > 1e-3
    print(f"beta={beta} label_smoothing={label_smoothing}: trl {loss_type} vs dpo_terms max |diff| = {worst:.2e}")
    assert set(ours["reward_accuracy"][1:].tolist()) == {0.0, 1.0}  # pairs where chosen wins and loses


def test_dpo_terms_float32_match_trl():
    """The same in float32 (gptjax's training dtype) on float32 log-probs: trl and gptjax group the subtractions
    differently (trl: (πc - ρc) - (πr - ρr); gptjax: (πc - πr) - (ρc - ρr)), so agreement is to float32 rounding of
    log-probs near -100 (~1e-5 on Δ, times β)."""
    pytest.importorskip("trl")
    rng = np.random.default_rng(3)
    values = (-rng.uniform(5, 120, (4, 16))).astype(np.float32)
    ours = {k: np.asarray(v) for k, v in dpo_terms(*values, 0.1, 0.0).items()}
    for i in range(values.shape[1]):
        theirs = trl_dpo(*(float(x) for x in values[:, i]), 0.1, 0.0, "sigmoid")
        for key in ("loss", "reward_chosen", "reward_rejected", "reward_margin"):
            assert abs(float(ours[key][i]) - theirs[key]) <= 1e-5, (i, key)


# ---------------------------------------------------------------- 4. per-sequence log-probs = transformers

PREFERENCE_RECORDS = [
    {"instruction": "Rewrite the sentence in passive voice.", "input": "The chef cooked the meal.",
     "output": "The meal was cooked by the chef.", "chosen": "The meal was cooked by the chef.",
     "rejected": "The chef has cooked a meal, I think."},
    {"instruction": "Name a primary color.", "input": "", "output": "Red.", "chosen": "Red is a primary color.",
     "rejected": "Purple, probably"},
    {"instruction": "What is 12 times 12?", "input": "", "output": "144", "chosen": "12 times 12 is 144.",
     "rejected": "It is 124 — or maybe 142."},
]


def hf_sequence_logprobs(model, tokens: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_t weights[t] · log_softmax(HF logits)[t, tokens[t + 1]] per row, in float64."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor(tokens[:, :-1], dtype=torch.long)).logits.double()
    token_logprobs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens[:, 1:, None], dtype=torch.long))
    return (token_logprobs[..., 0] * torch.tensor(weights, dtype=torch.float64)).sum(-1).numpy()


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_sequence_logprobs_match_transformers(gpt2_bpe_model, template):
    """sequence_logprobs on DPO rows built by preference_pairs + padded_sequences (GPT-2 BPE, prompts masked) equals
    the sum over the response tokens (the answer and its <|endoftext|>) of log_softmax of the HF export's logits.
    The rows are checked independently with HF's GPT-2 tokenizer (each piece encoded on its own, as gptjax does):
    <|endoftext|> + prompt + response + <|endoftext|>, weights 1 exactly on the response's predictions."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    lm = gptjax.load(gpt2_bpe_model["gptjax"])
    model = load_hf(gpt2_bpe_model["hf"])
    hf_tok = AutoTokenizer.from_pretrained(gpt2_bpe_model["hf"])
    eot = lm.tokenizer.eot_id
    assert eot == hf_tok.eos_token_id
    block = lm.config.block_size
    pairs = preference_pairs(PREFERENCE_RECORDS, RecordEncoder(template, lm.tokenizer), block + 1, "skip", "test")
    assert len(pairs) == len(PREFERENCE_RECORDS)
    width = row_width(max(len(s.ids) - 1 for pair in pairs for s in pair), block)
    batch = {**padded_sequences([p[0] for p in pairs], width, "chosen"),
             **padded_sequences([p[1] for p in pairs], width, "rejected")}

    for record, pair in zip(PREFERENCE_RECORDS, pairs):
        prompt_ids = [eot] + [t for piece in prompt_pieces(record, template) for t in hf_tok.encode(piece.text)]
        assert encode_pieces(lm.tokenizer.encode, eot, prompt_pieces(record, template))[0] == prompt_ids
        for field, seq in zip(("chosen", "rejected"), pair):
            response = hf_tok.encode(record[field]) + [eot]
            assert seq.ids.tolist() == prompt_ids + response
            assert seq.weights.tolist() == [0.0] * (len(prompt_ids) - 1) + [1.0] * len(response)
    for field, index in (("chosen", 0), ("rejected", 1)):  # the padded rows: the sequences, then zeros
        for row, pair in enumerate(pairs):
            n = len(pair[index].ids)
            assert batch[field][row, :n].tolist() == pair[index].ids.tolist() and not batch[field][row, n:].any()
            assert not batch[f"{field}_weights"][row, n - 1:].any()

    for field in ("chosen", "rejected"):
        tokens, weights = batch[field], batch[f"{field}_weights"]
        ours = np.asarray(jax.jit(sequence_logprobs, static_argnums=1)(lm.params, lm.model, tokens, weights))
        theirs = hf_sequence_logprobs(model, tokens, weights)
        diff = float(np.max(np.abs(ours - theirs)))
        print(f"{template} {field}: response tokens {weights.sum(1).tolist()}, log p {np.round(theirs, 3).tolist()}, "
              f"max |diff| = {diff:.2e}")
        assert diff <= LOGPROB_TOLERANCE
        assert np.all(theirs < -1.0)  # non-trivial sums


def test_dpo_objective_on_lora_policy_matches_trl_on_peft(tmp_path):
    """End to end: gptjax's DPO objective on preference rows (GPT-2 BPE, alpaca template) with a LoRA policy and its
    base as the frozen reference (B = 0, as at the start of a LoRA run) gives trl's DPO loss and rewards computed
    from the HF/peft twin's log-probs, the reference being the peft model with its adapter disabled (what trl's
    DPOTrainer uses for a PEFT policy without ref_model). Float32 forward passes on both sides: summed log-probs
    near -100 agree to ~1e-5, so the loss and rewards (times beta) to DPO_E2E_TOLERANCE."""
    pytest.importorskip("peft")
    pytest.importorskip("trl")
    from gptjax.data.tokenizer import Gpt2BpeAdapter
    from gptjax.model.transformer import Transformer
    from gptjax.train.objectives import DPO

    tokenizer = Gpt2BpeAdapter.from_dir(GPT2_FIXTURES)
    m = lora_model("llama", vocab_size=tokenizer.vocab_size, block_size=128, n_kv_head=2)
    params = random_params(m, seed=14, std=PARAM_STD)
    reference = jax.tree_util.tree_map_with_path(
        lambda path, leaf: np.zeros_like(leaf) if path[-1].key == "lora_b" else leaf, params)
    pairs = preference_pairs(PREFERENCE_RECORDS, RecordEncoder("alpaca", tokenizer), m.block_size + 1, "skip",
                             "train")
    width = row_width(max(len(s.ids) - 1 for pair in pairs for s in pair), m.block_size)
    batch = {**padded_sequences([p[0] for p in pairs], width, "chosen"),
             **padded_sequences([p[1] for p in pairs], width, "rejected"),
             "example_weights": np.ones(len(pairs), np.float32)}
    beta = 0.2
    loss_sum, metrics = jax.jit(lambda p, f, b: DPO(beta=beta)(p, f, Transformer(m), b, None))(
        params, reference, batch)
    n = float(metrics["weight"])
    ours = {"loss": float(loss_sum) / n, **{k: float(metrics[k]) / n for k in (
        "reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy")}}

    peft_model = llama_peft_model(m, params, tmp_path / "hf", tokenizer)
    policy = [hf_sequence_logprobs(peft_model, batch[f], batch[f"{f}_weights"]) for f in ("chosen", "rejected")]
    with peft_model.disable_adapter():
        ref = [hf_sequence_logprobs(peft_model, batch[f], batch[f"{f}_weights"]) for f in ("chosen", "rejected")]
    theirs = trl_dpo(*policy, *ref, beta, 0.0, "sigmoid")
    print(f"DPO objective on LoRA policy vs trl on peft: ours {ours}, trl {theirs}")
    assert abs(ours["reward_margin"]) > 0.1  # the adapters make the policy differ from the reference
    for key, value in theirs.items():
        assert abs(ours[key] - value) <= DPO_E2E_TOLERANCE, (key, ours[key], value)
