"""Every pure scoring function, shared by training objectives, evaluation, finetuning and the inference API:
per-token NLL, a response's summed log-probability, DPO's terms, the classifier head's logits. No trainer imports."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gptjax.model.transformer import Transformer, classifier_logits, last_real_hidden
from gptjax.parallel.rules import constrain

Batch = dict[str, jax.Array]


def token_nll(logits_BTV: jax.Array, targets_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token negative log-likelihood and log-partition (float32)."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return log_z_BT - target_logit_BT, log_z_BT


def class_logits(params, model: Transformer, tokens_BT: jax.Array, lengths_B: jax.Array,
                 rng: jax.Array | None = None) -> jax.Array:
    """The classifier head's logits [B, C] on each row's last real token."""
    rngs = {"dropout": rng} if rng is not None else {}
    tokens_BT = constrain(tokens_BT, ("batch", "act_length"))
    hidden_BTD = model.apply({"params": params}, tokens_BT, deterministic=rng is None, rngs=rngs, return_hidden=True)
    return classifier_logits(params, last_real_hidden(hidden_BTD, lengths_B))


def classify_terms(params, model: Transformer, batch: Batch, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per-example cross-entropy and correctness [B] of the classifier."""
    logits_BC = class_logits(params, model, batch["tokens"], batch["lengths"], rng)
    nll_B, _ = token_nll(logits_BC, batch["labels"])
    return {"loss": nll_B, "acc": (jnp.argmax(logits_BC, axis=-1) == batch["labels"]).astype(jnp.float32)}


def sequence_logprobs(params, model: Transformer, tokens_BT1: jax.Array, weights_BT: jax.Array,
                      rng: jax.Array | None = None) -> jax.Array:
    """Summed log p of each row's weighted targets [B] (float32): a response's log-probability given its prompt."""
    rngs = {"dropout": rng} if rng is not None else {}
    inputs_BT = constrain(tokens_BT1[:, :-1], ("batch", "act_length"))
    logits_BTV = model.apply({"params": params}, inputs_BT, deterministic=rng is None, rngs=rngs)
    nll_BT, _ = token_nll(logits_BTV, tokens_BT1[:, 1:])
    return -(nll_BT * weights_BT.astype(jnp.float32)).sum(axis=-1)


def pair_logprobs(
    params, model: Transformer, batch: Batch, rng: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(chosen [B], rejected [B]) summed response log-probs, both halves in one forward pass."""
    tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
    weights = jnp.concatenate([batch["chosen_weights"], batch["rejected_weights"]])
    both_2B = sequence_logprobs(params, model, tokens, weights, rng)
    half = batch["chosen"].shape[0]
    return both_2B[:half], both_2B[half:]


def dpo_terms(policy_chosen_B, policy_rejected_B, ref_chosen_B, ref_rejected_B, beta: float,
              label_smoothing: float = 0.0) -> dict[str, jax.Array]:
    """Per-pair DPO loss (Rafailov et al., sigmoid form; label smoothing as conservative DPO, which trl 1.16 computes
    as its "aot" loss on one pair, its "sigmoid" loss ignoring label_smoothing), implicit rewards
    beta·(log pi - log ref) of both responses, their margin, and whether chosen out-rewards rejected."""
    logits_B = (policy_chosen_B - policy_rejected_B) - (ref_chosen_B - ref_rejected_B)
    loss_B = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * logits_B)
              - label_smoothing * jax.nn.log_sigmoid(-beta * logits_B))
    chosen_B = beta * (policy_chosen_B - ref_chosen_B)
    rejected_B = beta * (policy_rejected_B - ref_rejected_B)
    return {"loss": loss_B, "reward_chosen": chosen_B, "reward_rejected": rejected_B,
            "reward_margin": chosen_B - rejected_B, "reward_accuracy": (chosen_B > rejected_B).astype(jnp.float32)}
