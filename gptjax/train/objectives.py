"""Training objectives: what the shared step differentiates. The trainer takes one of these; it never knows the loss.

An objective maps (trainable params, frozen params, model, batch, rng) to a summed loss and summed metrics, one of
which is `weight`, the normaliser: the step divides the gradient and every metric by the batch's total `weight`, so
k microbatches give the update of one batch k times larger. Batches are dicts; `loss_weights` says which targets
count (and how much), so masking (padding, packed-document boundaries, SFT prompts) is the data's business.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.errors import GptjaxError
from gptjax.model.losses import Batch, classify_terms, dpo_terms, pair_logprobs, token_nll
from gptjax.model.moe import MOE_COLLECTION, moe_metrics
from gptjax.model.transformer import Transformer
from gptjax.parallel.rules import constrain


class Objective(Protocol):
    name: str

    def __call__(self, params: Any, frozen: Any, model: Transformer, batch: Batch,
                 rng: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(summed loss to differentiate, summed metrics including `weight`)."""


def lm_batch(batch: Any) -> dict[str, np.ndarray]:
    """The loader's batch as the LM objective's dict: `tokens` [B, T+1] and `loss_weights` [B, T] (+ packing keys).

    A plain [B, T+1] array is a batch of windows: every target counts. With segment ids (packed documents) a target
    counts only inside its input's document, and segment 0 is padding."""
    if not isinstance(batch, dict):
        tokens_BT1 = np.asarray(batch)
        return {"tokens": tokens_BT1,
                "loss_weights": np.ones((tokens_BT1.shape[0], tokens_BT1.shape[1] - 1), np.float32)}
    if "loss_weights" in batch:
        return batch
    out = dict(batch)
    segments_BT1 = np.asarray(batch["segment_ids"])
    same_document_BT = (segments_BT1[:, 1:] == segments_BT1[:, :-1]) & (segments_BT1[:, :-1] != 0)
    out["loss_weights"] = same_document_BT.astype(np.float32)
    return out


@dataclasses.dataclass(frozen=True)
class NextTokenLM:
    """Next-token cross-entropy over the weighted targets, plus optional z-loss (PaLM) on log Z.

    A mixture-of-experts model (model.moe_experts > 0) adds its router losses, means over the MoE layers weighted
    by model.moe_aux_loss_weight and moe_z_loss_weight, and reports them with the per-layer expert fractions
    (`gptjax.model.moe.moe_metrics`); `loss` stays the cross-entropy alone, so val loss never includes them."""

    z_loss: float = 0.0
    name: str = "lm"

    @staticmethod
    def model_inputs(batch: Batch) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """(input tokens, positions or None, segment ids or None) [B, T] of a batch: what the model is applied to."""
        inputs_BT = constrain(batch["tokens"][:, :-1], ("batch", "act_length"))
        segments_BT = batch["segment_ids"][:, :-1] if "segment_ids" in batch else None
        positions_BT = batch["positions"][:, :-1] if "positions" in batch else None
        return inputs_BT, positions_BT, segments_BT

    def __call__(self, params, frozen, model, batch, rng):
        tokens_BT1 = batch["tokens"]
        weights_BT = batch["loss_weights"].astype(jnp.float32)
        inputs_BT, positions_BT, segments_BT = self.model_inputs(batch)
        rngs = {"dropout": rng} if rng is not None else {}
        moe = model.cfg.moe_experts > 0
        out = model.apply({"params": params}, inputs_BT, positions_BT, segments_BT, deterministic=rng is None,
                          rngs=rngs, mutable=[MOE_COLLECTION] if moe else False)
        logits_BTV, sown = out if moe else (out, None)
        nll_BT, log_z_BT = token_nll(logits_BTV, tokens_BT1[:, 1:])
        nll_sum = (nll_BT * weights_BT).sum()
        loss_sum = nll_sum + self.z_loss * (jnp.square(log_z_BT) * weights_BT).sum() if self.z_loss else nll_sum
        metrics = {"loss": nll_sum, "weight": weights_BT.sum()}
        if moe:  # per-batch means, scaled by the weight like the sums they join (the step divides by it)
            means = moe_metrics(sown[MOE_COLLECTION], model.cfg.n_layer)
            loss_sum = loss_sum + metrics["weight"] * (model.cfg.moe_aux_loss_weight * means["moe_aux_loss"]
                                                       + model.cfg.moe_z_loss_weight * means["moe_z_loss"])
            metrics.update({name: value * metrics["weight"] for name, value in means.items()})
        return loss_sum, metrics


@dataclasses.dataclass(frozen=True)
class Classify:
    """Cross-entropy of the classifier head (model.num_classes) on each row's last real token; counts correct."""

    name: str = "classify"

    def __call__(self, params, frozen, model, batch, rng):
        weights_B = batch["example_weights"].astype(jnp.float32)
        terms = classify_terms(params, model, batch, rng)
        loss_sum = (terms["loss"] * weights_B).sum()
        return loss_sum, {"loss": loss_sum, "acc": (terms["acc"] * weights_B).sum(), "weight": weights_B.sum()}


@dataclasses.dataclass(frozen=True)
class DPO:
    """Direct Preference Optimization against a frozen reference: its log-probs come with the batch (precomputed
    once, `ref_chosen` / `ref_rejected`) or from the reference params carried in the state (`frozen`)."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    name: str = "dpo"

    def __call__(self, params, frozen, model, batch, rng):
        weights_B = batch["example_weights"].astype(jnp.float32)
        policy_chosen, policy_rejected = pair_logprobs(params, model, batch, rng)
        if "ref_chosen" in batch:
            ref_chosen, ref_rejected = batch["ref_chosen"], batch["ref_rejected"]
        elif frozen is not None:
            ref_chosen, ref_rejected = jax.lax.stop_gradient(pair_logprobs(frozen, model, batch))
        else:
            raise GptjaxError("the DPO objective needs a reference: batches with ref_chosen/ref_rejected or the "
                              "reference params in the train state (finetune.reference)")
        terms = dpo_terms(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta, self.label_smoothing)
        sums = {k: (v * weights_B).sum() for k, v in terms.items()}
        return sums["loss"], {**sums, "weight": weights_B.sum()}


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "lm": lambda cfg: NextTokenLM(z_loss=cfg.train.z_loss),
    "sft": lambda cfg: NextTokenLM(z_loss=cfg.train.z_loss, name="sft"),
    "classify": lambda cfg: Classify(),
    "dpo": lambda cfg: DPO(beta=cfg.finetune.beta, label_smoothing=cfg.finetune.label_smoothing),
}
# the loader's batch -> the objective's dict; finetuning batches (gptjax.finetune.batches) arrive in their layout
BATCH_FORMATS: dict[str, Callable[[Any], dict]] = {"lm": lm_batch, "sft": lm_batch, "classify": dict, "dpo": dict}


def make_objective(cfg) -> Objective:
    """The objective `train.objective` names (its settings from `cfg`: train.z_loss, finetune.beta, ...)."""
    if cfg.train.objective not in OBJECTIVES:
        raise GptjaxError(f"train.objective='{cfg.train.objective}' is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[cfg.train.objective](cfg)


def batch_format(train_cfg) -> Callable[[Any], dict]:
    """The host-side function that turns the loader's batches into the objective's dict."""
    return BATCH_FORMATS[train_cfg.objective]
