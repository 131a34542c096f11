"""Mixture of experts: the MLP of a MoE layer (ModelConfig.is_moe_layer) as top-k routed experts, optional shared
experts, and the router's auxiliary losses.

Routing (model.moe_router): `softmax_topk` takes the softmax over all E router logits, then the k largest
probabilities (Mixtral, Qwen3-MoE); `topk_softmax` takes the k largest logits and a softmax over just those.
model.moe_renormalize rescales each token's k weights to sum to 1 (Mixtral; Qwen3-MoE's norm_topk_prob).

Dispatch (model.moe_dispatch): `dropless` sorts the token-slots (token, choice) by expert and runs every expert's
matmul as one grouped matmul (`jax.lax.ragged_dot`; on CPU an equivalent blocked form, block_grouped_matmul):
nothing dropped, no capacity. `capacity` gives each expert
C = ceil(T·k/E·moe_capacity_factor) slots per sequence of T tokens and fills them in priority order (every token's
first choice, then every second choice, ...) through one-hot dispatch / combine tensors: static shapes, as TPUs
like them. A token-slot past its expert's capacity is dropped: it adds nothing, the token goes on on the residual.

Each MoE layer sows into the "moe" collection, which a caller gets only by asking (`apply(..., mutable=["moe"])`;
a plain `apply` is unchanged): `aux_loss` (Switch/GShard load balancing E·Σ_e f_e·P_e), `z_loss` (ST-MoE's
mean logsumexp² of the router logits), `expert_fraction` [E] (f_e: the share of token-slots routed to expert e; a
dead expert shows 0) and `dropped` (the share of token-slots dropped; always 0 when dropless). `moe_metrics` turns
them into the objective's loss terms and per-layer metrics.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax.config import ModelConfig
from gptjax.model.layers import Dense, Mlp, einsum_f32, normal_init
from gptjax.parallel.rules import constrain, target_platform

MOE_COLLECTION = "moe"  # the variable collection MoE layers sow their router statistics into


class Routing(NamedTuple):
    """Each token's k experts and combine weights, and the router's full distribution."""

    weights_NK: jax.Array  # float32
    experts_NK: jax.Array  # int32, distinct per token
    probs_NE: jax.Array  # float32 softmax over all experts


def route(logits_NE: jax.Array, top_k: int, router: str, renormalize: bool) -> Routing:
    """The top-k routing of router logits [N, E] (float32) under model.moe_router / moe_renormalize."""
    probs_NE = jax.nn.softmax(logits_NE, axis=-1)
    if router == "softmax_topk":
        weights_NK, experts_NK = jax.lax.top_k(probs_NE, top_k)
    else:
        top_logits_NK, experts_NK = jax.lax.top_k(logits_NE, top_k)
        weights_NK = jax.nn.softmax(top_logits_NK, axis=-1)
    if renormalize:
        weights_NK = weights_NK / jnp.sum(weights_NK, axis=-1, keepdims=True)
    return Routing(weights_NK, experts_NK.astype(jnp.int32), probs_NE)


def expert_fraction(experts_NK: jax.Array, n_experts: int) -> jax.Array:
    """f_e [E]: the share of all token-slots (token, choice) routed to each expert; sums to 1."""
    counts_E = jnp.bincount(experts_NK.reshape(-1), length=n_experts)
    return counts_E.astype(jnp.float32) / experts_NK.size


def load_balancing_loss(fraction_E: jax.Array, probs_NE: jax.Array) -> jax.Array:
    """Switch/GShard's E·Σ_e f_e·P_e (P_e: mean router probability of e): 1 when balanced, E when collapsed.

    HF's Mixtral loss counts f per choice rank, which makes it k times this."""
    n_experts = probs_NE.shape[-1]
    return n_experts * jnp.sum(fraction_E * jnp.mean(probs_NE, axis=0))


def router_z_loss(logits_NE: jax.Array) -> jax.Array:
    """ST-MoE's router z-loss: mean over tokens of logsumexp(router logits)²."""
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits_NE, axis=-1)))


def capacity(tokens: int, top_k: int, n_experts: int, factor: float) -> int:
    """Slots per expert for a group of `tokens` tokens: ceil(tokens·k/E·factor)."""
    return max(1, math.ceil(tokens * top_k / n_experts * factor))


def capacity_masks(experts_BTK: jax.Array, weights_BTK: jax.Array, n_experts: int,
                   slots: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One-hot dispatch [B, T, E, C] and weighted combine [B, T, E, C] tensors (float32) of capacity routing within
    each row, and the kept mask [B, T, K]. Slots fill in priority order: all first choices of the row in token
    order, then all second choices, ...; a slot past its expert's `slots` is dropped."""
    batch, length, top_k = experts_BTK.shape
    choice_BTKE = jax.nn.one_hot(experts_BTK, n_experts, dtype=jnp.int32)
    priority_BSE = choice_BTKE.transpose(0, 2, 1, 3).reshape(batch, top_k * length, n_experts)
    position_BSE = jnp.cumsum(priority_BSE, axis=1) - 1
    position_BTKE = position_BSE.reshape(batch, top_k, length, n_experts).transpose(0, 2, 1, 3)
    position_BTK = jnp.sum(position_BTKE * choice_BTKE, axis=-1)
    kept_BTK = position_BTK < slots
    slot_BTKC = jax.nn.one_hot(position_BTK, slots, dtype=jnp.float32) * kept_BTK[..., None]
    choice_f_BTKE = choice_BTKE.astype(jnp.float32)
    dispatch_BTEC = jnp.einsum("btke,btkc->btec", choice_f_BTKE, slot_BTKC)
    combine_BTEC = jnp.einsum("btke,btkc->btec", choice_f_BTKE * weights_BTK[..., None], slot_BTKC)
    return dispatch_BTEC, combine_BTEC, kept_BTK


def block_grouped_matmul(a_SI: jax.Array, kernel_EIO: jax.Array, group_sizes_E: jax.Array, dtype) -> jax.Array:
    """What `jax.lax.ragged_dot` computes (rows sorted by group, row s times its group's kernel; float32), as one
    batched matmul over blocks of rows that each belong to a single group: every group is padded to whole blocks,
    so there are at most E·(block − 1) padding rows, and the shapes are static.

    XLA's CPU backend runs ragged_dot (and its gradients) as a masked product over all E groups, about E times the
    work: 6x slower than this for 8 experts. TPU and GPU have native grouped matmuls and keep ragged_dot."""
    rows, groups = a_SI.shape[0], kernel_EIO.shape[0]
    block = int(min(64, max(8, 2 ** math.ceil(math.log2(max(1, rows // groups))))))
    n_blocks = -(-(rows + groups * (block - 1)) // block)
    padded_E = -(-group_sizes_E // block) * block
    start_E = jnp.cumsum(group_sizes_E) - group_sizes_E
    padded_start_E = jnp.cumsum(padded_E) - padded_E
    group_S = jnp.repeat(jnp.arange(groups), group_sizes_E, total_repeat_length=rows)
    target_S = padded_start_E[group_S] + jnp.arange(rows) - start_E[group_S]
    a_RI = jnp.zeros((n_blocks * block, a_SI.shape[1]), a_SI.dtype).at[target_S].set(a_SI, unique_indices=True)
    block_group_N = jnp.minimum(jnp.searchsorted(jnp.cumsum(padded_E), jnp.arange(n_blocks) * block, side="right"),
                                groups - 1)
    y_NBO = einsum_f32("nbi,nio->nbo", a_RI.reshape(n_blocks, block, -1), kernel_EIO[block_group_N], dtype)
    return y_NBO.reshape(n_blocks * block, -1)[target_S]


def grouped_matmul(a_SI: jax.Array, kernel_EIO: jax.Array, group_sizes_E: jax.Array, dtype) -> jax.Array:
    """Rows sorted by group times their group's kernel, inputs in `dtype`, float32 out: ragged_dot, or on CPU the
    block form (see block_grouped_matmul)."""
    if target_platform() == "cpu":
        return block_grouped_matmul(a_SI, kernel_EIO, group_sizes_E, dtype)
    return jax.lax.ragged_dot(a_SI.astype(dtype), kernel_EIO.astype(dtype), group_sizes_E,
                              preferred_element_type=jnp.float32)


Matmul = Callable[[jax.Array, tuple[jax.Array, jax.Array | None]], jax.Array]


def expert_mlp(x_SD: jax.Array, weights: Mapping[str, tuple[jax.Array, jax.Array | None]], matmul: Matmul,
               kind: str, gelu_approximate: bool, dtype) -> jax.Array:
    """Every routed token-slot through its expert's MLP (the kind model.mlp names), with `matmul` applying a
    stacked kernel to the slots of each expert. Returns float32."""
    if kind in ("swiglu", "geglu"):
        gate_SF = matmul(x_SD, weights["gate"])
        up_SF = matmul(x_SD, weights["up"])
        act_SF = nn.silu(gate_SF) if kind == "swiglu" else nn.gelu(gate_SF, approximate=gelu_approximate)
        h_SF = act_SF * up_SF
    else:
        h_SF = nn.gelu(matmul(x_SD, weights["fc"]), approximate=gelu_approximate)
    return matmul(h_SF.astype(dtype), weights["proj"])


def dropless_mlp(x_ND: jax.Array, routing: Routing, weights, cfg: ModelConfig, dtype) -> jax.Array:
    """Σ_k weight·expert_k(x) [N, D] (float32): token-slots sorted by expert, each matmul one grouped matmul."""
    n_tokens, top_k = routing.experts_NK.shape
    experts_S = routing.experts_NK.reshape(-1)
    order_S = jnp.argsort(experts_S, stable=True)
    sorted_experts_S = jnp.take(experts_S, order_S)
    group_sizes_E = jnp.bincount(experts_S, length=cfg.moe_experts).astype(jnp.int32)
    x_SD = jnp.take(x_ND, order_S // top_k, axis=0)

    def matmul(a_SI, kernel_bias):
        kernel_EIO, bias_EO = kernel_bias
        y_SO = grouped_matmul(a_SI, kernel_EIO, group_sizes_E, dtype)
        return y_SO if bias_EO is None else y_SO + jnp.take(bias_EO, sorted_experts_S, axis=0)

    y_SD = expert_mlp(x_SD, weights, matmul, cfg.mlp, cfg.gelu_approximate, dtype)
    y_NKD = jnp.take(y_SD, jnp.argsort(order_S), axis=0).reshape(n_tokens, top_k, -1)
    return jnp.einsum("nkd,nk->nd", y_NKD, routing.weights_NK)


def capacity_mlp(x_BTD: jax.Array, routing: Routing, weights, cfg: ModelConfig,
                 dtype) -> tuple[jax.Array, jax.Array]:
    """Capacity-dispatched experts per row: (output [B, T, D] float32, dropped share of the token-slots)."""
    batch, length, _ = x_BTD.shape
    slots = capacity(length, cfg.moe_top_k, cfg.moe_experts, cfg.moe_capacity_factor)
    dispatch_BTEC, combine_BTEC, kept_BTK = capacity_masks(
        routing.experts_NK.reshape(batch, length, -1), routing.weights_NK.reshape(batch, length, -1),
        cfg.moe_experts, slots)
    x_EBCD = jnp.einsum("btec,btd->ebcd", dispatch_BTEC, x_BTD.astype(jnp.float32)).astype(dtype)
    x_EBCD = constrain(x_EBCD, ("act_expert", "act_expert_batch", None, "act_embed"))
    n_experts, _, _, d = x_EBCD.shape

    def matmul(a_EMI, kernel_bias):  # M = B·C rows per expert; the expert axis leads, as CPU dots need in bf16
        kernel_EIO, bias_EO = kernel_bias
        y_EMO = einsum_f32("emi,eio->emo", a_EMI, kernel_EIO, dtype)
        return y_EMO if bias_EO is None else y_EMO + bias_EO[:, None, :]

    y_EMD = expert_mlp(x_EBCD.reshape(n_experts, -1, d), weights, matmul, cfg.mlp, cfg.gelu_approximate, dtype)
    y_BTD = jnp.einsum("btec,ebcd->btd", combine_BTEC, y_EMD.reshape(x_EBCD.shape))
    return y_BTD, 1.0 - jnp.mean(kept_BTK.astype(jnp.float32))


class ExpertKernel(nn.Module):
    """The stacked kernel [E, in, out] of one matmul of every expert, and its biases [E, out] when use_bias."""

    shape: tuple[int, int, int]
    axes: tuple[str, str, str]
    init_std: float
    use_bias: bool

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array | None]:
        kernel = self.param("kernel", nn.with_logical_partitioning(normal_init(self.init_std), self.axes), self.shape,
                            jnp.float32)
        if not self.use_bias:
            return kernel, None
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axes[0], self.axes[2])),
                          (self.shape[0], self.shape[2]), jnp.float32)
        return kernel, bias


class MoeMlp(nn.Module):
    """The MLP of a MoE layer: x [B, T, D] -> routed experts (+ shared experts) [B, T, D] in cfg.dtype.

    Params: router/kernel [D, E] (float32 routing), gate, up, proj (swiglu/geglu) or fc, proj (gelu) as stacked
    kernels [E, D, F] / [E, F, D] with logical axes (expert, embed, mlp) / (expert, mlp, embed), and `shared`, a
    dense Mlp of width moe_shared_experts·moe_d_ff (the sum of that many always-on experts)."""

    cfg: ModelConfig
    init_std: float
    out_std: float
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        batch, length, d = x_BTD.shape
        n_experts, width = cfg.moe_experts, cfg.moe_ff_dim
        logits_BTE = Dense((n_experts,), ("embed", "expert"), init_std=self.init_std, dtype=jnp.float32,
                           name="router")(x_BTD.astype(jnp.float32))
        logits_NE = logits_BTE.reshape(batch * length, n_experts)
        routing = route(logits_NE, cfg.moe_top_k, cfg.moe_router, cfg.moe_renormalize)
        names = ("gate", "up", "proj") if cfg.mlp in ("swiglu", "geglu") else ("fc", "proj")
        weights = {
            name: ExpertKernel((n_experts, width, d) if name == "proj" else (n_experts, d, width),
                               ("expert", "mlp", "embed") if name == "proj" else ("expert", "embed", "mlp"),
                               self.out_std if name == "proj" else self.init_std, cfg.use_bias, name=name)()
            for name in names}
        if cfg.moe_dispatch == "dropless":
            y_BTD = dropless_mlp(x_BTD.reshape(batch * length, d), routing, weights, cfg, dtype).reshape(x_BTD.shape)
            dropped = jnp.zeros((), jnp.float32)
        else:
            y_BTD, dropped = capacity_mlp(x_BTD, routing, weights, cfg, dtype)
        if cfg.moe_shared_experts:
            y_BTD = y_BTD + Mlp(cfg.mlp, cfg.gelu_approximate, d, cfg.moe_shared_experts * width, cfg.use_bias,
                                self.init_std, self.out_std, dtype, None, self.deterministic, name="shared")(x_BTD)
        fraction_E = expert_fraction(routing.experts_NK, n_experts)
        self.sow(MOE_COLLECTION, "aux_loss", load_balancing_loss(fraction_E, routing.probs_NE))
        self.sow(MOE_COLLECTION, "z_loss", router_z_loss(logits_NE))
        self.sow(MOE_COLLECTION, "expert_fraction", fraction_E)
        self.sow(MOE_COLLECTION, "dropped", dropped)
        return y_BTD.astype(dtype)


def active_mlp_params(cfg: ModelConfig, index: int) -> int:
    """Matmul params one token goes through in layer `index`'s MLP: the dense MLP, or (MoE) its top-k experts, the
    shared experts and the router."""
    matrices = 3 if cfg.mlp in ("swiglu", "geglu") else 2
    if not cfg.is_moe_layer(index):
        return matrices * cfg.d_model * cfg.ff_dim
    experts = cfg.moe_top_k + cfg.moe_shared_experts
    return experts * matrices * cfg.d_model * cfg.moe_ff_dim + cfg.d_model * cfg.moe_experts


def layer_stats(moe_vars: Mapping, n_layer: int) -> dict[int, dict[str, jax.Array]]:
    """{layer index: {statistic: value}} from the "moe" collection of `apply(..., mutable=["moe"])`: unrolled
    layers sow under layer_<i>/moe, scanned ones (all MoE) stacked on a leading layer axis under layers/moe."""
    if "layers" in moe_vars:
        stacked = {name: value[0] for name, value in moe_vars["layers"]["moe"].items()}
        return {i: {name: value[i] for name, value in stacked.items()} for i in range(n_layer)}
    return {int(layer.removeprefix("layer_")): {name: value[0] for name, value in sown["moe"].items()}
            for layer, sown in moe_vars.items()}


def moe_metrics(moe_vars: Mapping, n_layer: int) -> dict[str, jax.Array]:
    """The router statistics as scalar metrics: moe_aux_loss, moe_z_loss and moe_dropped (means over the MoE layers,
    what the objective weighs) and per layer moe/layer_<i>/{aux_loss, z_loss, dropped, expert_<e>} (the token
    fraction of each expert: a dead expert is a flat 0 in TensorBoard)."""
    stats = layer_stats(moe_vars, n_layer)
    metrics = {f"moe_{name}": jnp.mean(jnp.stack([s[name] for s in stats.values()]))
               for name in ("aux_loss", "z_loss", "dropped")}
    for i, s in sorted(stats.items()):
        metrics.update({f"moe/layer_{i}/{name}": s[name] for name in ("aux_loss", "z_loss", "dropped")})
        metrics.update({f"moe/layer_{i}/expert_{e}": s["expert_fraction"][e]
                        for e in range(s["expert_fraction"].shape[0])})
    return metrics
