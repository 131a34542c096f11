"""A finetuned run's held-out split scored with its own objective: what `gptjax eval --workdir RUN` reports for
classify / sft / dpo runs (`{"results": {"sms_spam": {"acc": ..., "n": ...}}}`).

classify: acc (± binomial stderr, lm-eval's sample stderr of the 0/1 values) and loss per example. sft: the response
tokens' loss, perplexity and bits per byte. dpo: loss, reward accuracy and margin (± stderr), chosen and rejected
rewards, against the reference (the run's `train.init_from` model).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from gptjax.errors import GptjaxError
from gptjax.eval.suite import data_digest, mean_stderr, model_info
from gptjax.fileio import sha256_file, write_json_atomic
from gptjax.finetune.batches import FinetuneData, load_finetune_data
from gptjax.model.losses import classify_terms, dpo_terms, pair_logprobs, sequence_logprobs


def _per_example(fn, params, batches, n: int, desc: str) -> dict[str, np.ndarray]:
    """`fn(params, batch)` -> dict of [B] arrays over every batch, concatenated and cut to the split's n."""
    parts: dict[str, list] = {}
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
        for key, value in fn(params, batch).items():
            parts.setdefault(key, []).append(np.asarray(value, np.float64))
    return {key: np.concatenate(values)[:n] for key, values in parts.items()}


def _mean_with_stderr(values: np.ndarray, name: str) -> dict:
    return {name: float(values.mean()), f"{name}_stderr": mean_stderr(values.tolist())}


def reference_logprobs(lm, data: FinetuneData, split: str, batch_size: int, load_model: Callable[[str], Any]) -> None:
    """Attaches the reference's (the run's init_from model's, read by `load_model`) log-probs of each pair of
    `split` to the data."""
    base_path = lm.meta.get("base") or lm.cfg.train.init_from
    if not base_path or not Path(base_path).exists():
        raise GptjaxError(f"scoring a DPO run needs its reference model (train.init_from={base_path!r}), which is "
                          f"not there; restore it at that path")
    base = load_model(base_path)
    score = jax.jit(lambda p, b: dict(zip(("ref_chosen", "ref_rejected"), pair_logprobs(p, base.model, b))))
    refs = _per_example(score, base.params, data.eval_batches(split, batch_size), data.splits[split].n, "reference")
    data.attach(split, {k: v.astype(np.float32) for k, v in refs.items()})


def score_split(lm, data: FinetuneData, split: str, batch_size: int, load_model: Callable[[str], Any]) -> dict:
    """The metrics of `lm` (a finetuned LM) on `split` of its finetuning data (a DPO run's reference model read by
    `load_model`, gptjax.load)."""
    objective, n = lm.cfg.train.objective, data.splits[split].n
    batches = data.eval_batches(split, batch_size)
    if objective == "classify":
        values = _per_example(jax.jit(lambda p, b: classify_terms(p, lm.model, b)), lm.params, batches, n, split)
        return {**_mean_with_stderr(values["acc"], "acc"), "loss": float(values["loss"].mean()), "n": n}
    if objective == "sft":
        def response(params, batch):
            return {"logprob": sequence_logprobs(params, lm.model, batch["tokens"], batch["loss_weights"]),
                    "tokens": batch["loss_weights"].sum(-1)}

        values = _per_example(jax.jit(response), lm.params, batches, n, split)
        loss = float(-values["logprob"].sum() / max(values["tokens"].sum(), 1))
        return {"loss": loss, "ppl": float(np.exp(loss)), "bpb": loss / np.log(2) / max(data.bytes_per_token, 1e-9),
                "n": n, "tokens": int(values["tokens"].sum())}
    if objective == "dpo":
        reference_logprobs(lm, data, split, batch_size, load_model)
        beta, smoothing = lm.cfg.finetune.beta, lm.cfg.finetune.label_smoothing

        def pairs(params, batch):
            chosen, rejected = pair_logprobs(params, lm.model, batch)
            return dpo_terms(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta, smoothing)

        values = _per_example(jax.jit(pairs), lm.params, data.eval_batches(split, batch_size), n, split)
        return {"loss": float(values["loss"].mean()), **_mean_with_stderr(values["reward_accuracy"], "reward_accuracy"),
                **_mean_with_stderr(values["reward_margin"], "reward_margin"),
                "reward_chosen": float(values["reward_chosen"].mean()),
                "reward_rejected": float(values["reward_rejected"].mean()), "n": n}
    raise GptjaxError(f"train.objective={objective!r} has no finetuning split to score")


def evaluate_finetune(lm, workdir: str, load_model: Callable[[str], Any], split: str = "test", batch_size: int = 16,
                      out: str | Path | None = None) -> dict:
    """`{"results": {task: metrics}, "model": ..., "data": {task: sha256}}` for `split` of the run's records
    (`load_model`: gptjax.load, for a DPO run's reference)."""
    data = load_finetune_data(lm.cfg, lm.tokenizer)
    metrics = {**score_split(lm, data, split, batch_size, load_model), "split": split}
    task = lm.cfg.finetune.task
    document = {"results": {task: metrics}, "model": model_info(lm, workdir),
                "data": {task: data_digest({str(data.path): sha256_file(data.path)})}}
    if out:
        write_json_atomic(out, document)
    return document
