"""Learning-rate schedules and the optimizers (`train.optimizer`): AdamW, Muon, Lion, Adafactor and Nesterov SGD.

Every optimizer is one chain: global-norm clipping, the optimizer's direction, per-leaf lr multipliers (μP) when
given, decoupled weight decay on >=2-D weights (lr·wd·p per step), then -lr from the schedule. Muon splits the
params: the hidden matrices (the Dense kernels inside the blocks) take the orthogonalised momentum at
`train.muon_lr`, everything else (embeddings, lm_head, norms, biases, LoRA adapters, classifier) AdamW at `train.lr`.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gptjax.config import Config, ModelConfig, TrainConfig
from gptjax.model.mup import adam_lr_multipliers, is_hidden_matrix, width_multiplier

KeyPath = tuple
NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic Newton–Schulz coefficients (modded-nanogpt, Muon)
NS_EPS = 1e-7  # added to the Frobenius norm before the first iteration, as in Muon's reference code
# logical axes along which a stacked param holds independent matrices (scanned layers, experts)
BATCH_AXES = ("layers", "expert", "experts")


# --- schedules --------------------------------------------------------------------------------------------------

def schedule_horizon(t: TrainConfig) -> int:
    return t.schedule_steps or t.steps


def _cosine(ratio, lr: float, min_lr: float):
    return min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (lr - min_lr)


def _wsd_decay(ratio, t: TrainConfig):
    """WSD's final decay from lr to min_lr at `ratio` in [0, 1] of it: linear, cosine or 1−sqrt."""
    if t.wsd_decay == "cosine":
        return _cosine(ratio, t.lr, t.min_lr)
    if t.wsd_decay == "1-sqrt":
        return t.lr + jnp.sqrt(ratio) * (t.min_lr - t.lr)
    return t.lr + ratio * (t.min_lr - t.lr)


def _after_warmup(step, t: TrainConfig, horizon: int):
    """The lr at `step` (a float array, past the warmup) for every schedule but cosine_restarts."""
    if t.schedule == "constant":
        return jnp.full_like(step, t.lr)
    if t.schedule == "inverse_sqrt":
        return t.lr * jnp.sqrt(t.warmup_steps / jnp.maximum(step, 1.0))
    if t.schedule in ("cosine", "linear"):
        decay_end = t.decay_steps or horizon
        ratio = jnp.clip((step - t.warmup_steps) / max(decay_end - t.warmup_steps, 1), 0.0, 1.0)
        return _cosine(ratio, t.lr, t.min_lr) if t.schedule == "cosine" else t.lr + ratio * (t.min_lr - t.lr)
    decay_len = t.decay_steps or max(horizon // 5, 1)
    ratio = jnp.clip((step - (horizon - decay_len)) / decay_len, 0.0, 1.0)
    return _wsd_decay(ratio, t)


def _warmup(step, t: TrainConfig):
    return t.lr * (step + 1) / (t.warmup_steps + 1)


def _cosine_restarts(step, t: TrainConfig, horizon: int):
    """`train.cycles` equal cycles over the horizon, each a warmup then a cosine to min_lr; min_lr after them."""
    cycle_len = math.ceil(horizon / t.cycles)
    position = step - jnp.floor(step / cycle_len) * cycle_len
    ratio = jnp.clip((position - t.warmup_steps) / max(cycle_len - t.warmup_steps, 1), 0.0, 1.0)
    in_cycle = jnp.where(position < t.warmup_steps, _warmup(position, t), _cosine(ratio, t.lr, t.min_lr))
    return jnp.where(step < t.cycles * cycle_len, in_cycle, t.min_lr)


def lr_schedule(t: TrainConfig) -> optax.Schedule:
    """Linear warmup, then cosine to min_lr (nanoGPT's formula), linear to min_lr, warmup-stable-decay (linear,
    cosine or 1−sqrt decay), lr·sqrt(warmup/step) (inverse_sqrt), cosine with restarts, or constant.

    The schedule spans `train.schedule_steps` (0 = `train.steps`); a resumed run keeps the horizon of the run that
    started it, so extending `train.steps` never reshapes the steps already taken."""
    horizon = schedule_horizon(t)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        if t.schedule == "cosine_restarts":
            return _cosine_restarts(step, t, horizon)
        return jnp.where(step < t.warmup_steps, _warmup(step, t), _after_warmup(step, t, horizon))

    return schedule


def scaled_schedule(t: TrainConfig, peak_lr: float) -> optax.Schedule:
    """`lr_schedule(t)` with its peak moved from train.lr to `peak_lr` (every value scaled by peak_lr / lr)."""
    schedule, ratio = lr_schedule(t), peak_lr / t.lr
    return lambda step: schedule(step) * ratio


# --- pieces shared by the optimizers ----------------------------------------------------------------------------

def decay_mask(params):
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def scale_by_multipliers(multiplier_of: Callable[[tuple], float]) -> optax.GradientTransformation:
    """Multiplies each update leaf by `multiplier_of(key path)` (a Python float fixed at trace time); no state.

    Key paths, not a params-shaped tree: inside `optax.multi_transform` the frozen leaves are MaskedNodes, and the
    paths of the leaves left are the params' own."""

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(lambda path, u: u * multiplier_of(path), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _finish(direction: list[optax.GradientTransformation], t: TrainConfig, schedule: optax.Schedule,
            lr_multipliers: Callable[[tuple], float] | None) -> optax.GradientTransformation:
    """direction → per-leaf multipliers (when given) → decoupled decay on >=2-D weights → -schedule."""
    if lr_multipliers is not None:
        direction = [*direction, scale_by_multipliers(lr_multipliers)]
    return optax.chain(*direction, optax.add_decayed_weights(t.weight_decay, decay_mask),
                       optax.scale_by_learning_rate(schedule))


def adamw(t: TrainConfig, lr_multipliers: Callable[[tuple], float] | None = None) -> optax.GradientTransformation:
    """optax.adamw's chain (Adam direction, decoupled decay on >=2-D weights, -lr), with per-leaf multipliers on
    the Adam direction when given: lr·multiplier for the step, lr·wd for the decay (the `mup` package's MuAdamW)."""
    return _finish([optax.scale_by_adam(b1=t.beta1, b2=t.beta2, eps=t.eps)], t, lr_schedule(t), lr_multipliers)


def lion(t: TrainConfig, lr_multipliers: Callable[[tuple], float] | None = None) -> optax.GradientTransformation:
    """optax.lion (sign of the interpolated momentum, b1 = train.beta1, b2 = train.beta2) with decoupled decay."""
    return _finish([optax.scale_by_lion(b1=t.beta1, b2=t.beta2)], t, lr_schedule(t), lr_multipliers)


def sgd(t: TrainConfig, lr_multipliers: Callable[[tuple], float] | None = None) -> optax.GradientTransformation:
    """optax.sgd with Nesterov momentum `train.sgd_momentum`, plus decoupled decay."""
    return _finish([optax.trace(decay=t.sgd_momentum, nesterov=True)], t, lr_schedule(t), lr_multipliers)


def adafactor(t: TrainConfig, lr_multipliers: Callable[[tuple], float] | None = None,
              layout_of: Callable[[KeyPath], MatrixLayout | None] | None = None) -> optax.GradientTransformation:
    """optax.adafactor's direction (factored second moments of params whose second-largest dim is at least
    `train.adafactor_factor_min_dim`, decay rate 0.8, update clipping at block RMS 1, no momentum) with an absolute
    step size (multiply_by_parameter_scale=False: train.lr means what it means for AdamW) and decoupled decay.

    With `layout_of`, each hidden matrix is seen as its [*stack, fan_in, fan_out] view, so a [d, heads, head_dim]
    kernel is factored over d and heads·head_dim (optax alone factors its two largest dims, and leaves it whole
    when head_dim is small)."""
    direction = [optax.scale_by_factored_rms(min_dim_size_to_factor=t.adafactor_factor_min_dim),
                 optax.clip_by_block_rms(1.0)]
    if layout_of is not None:
        direction = [in_matrix_view(optax.chain(*direction), layout_of)]
    return _finish(direction, t, lr_schedule(t), lr_multipliers)


# --- hidden matrices and Muon -----------------------------------------------------------------------------------

class MatrixLayout(NamedTuple):
    """How a hidden param is read as a stack of 2-D [fan_in, fan_out] matrices: its first `batch_axes` axes index
    the stack (scanned layers), the next `fan_in_axes` are the matrix's input, the rest its output."""

    batch_axes: int
    fan_in_axes: int


def layout_from_axes(axes: tuple[str, ...]) -> MatrixLayout:
    """A Dense kernel's layout from its logical axis names: a kernel maps "embed" to the rest ([embed, heads,
    head_dim], [embed, mlp]) or the rest to "embed" ([heads, head_dim, embed], [mlp, embed])."""
    batch = 0
    while batch < len(axes) and axes[batch] in BATCH_AXES:
        batch += 1
    matrix = axes[batch:]
    return MatrixLayout(batch, 1 if matrix[0] == "embed" else len(matrix) - 1)


def hidden_matrix_layouts(model: ModelConfig) -> Callable[[KeyPath], MatrixLayout | None]:
    """key path -> the layout of the hidden matrix there (every Dense kernel inside the blocks), None for the
    other params (embeddings, lm_head, norms, biases, LoRA adapters, classifier)."""
    from gptjax.model.transformer import abstract_params

    boxed = abstract_params(model, 0)
    layouts = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(
            boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]:
        if is_hidden_matrix(path) and isinstance(leaf, nn.Partitioned):
            layouts[jax.tree_util.keystr(path)] = layout_from_axes(tuple(leaf.names))
    return lambda path: layouts.get(jax.tree_util.keystr(path))


def matrix_dims(shape: tuple[int, ...], layout: MatrixLayout) -> tuple[int, int, int]:
    """(stack size, fan_in, fan_out) of a param of `shape` read with `layout`."""
    lead, rest = shape[: layout.batch_axes], shape[layout.batch_axes:]
    return math.prod(lead), math.prod(rest[: layout.fan_in_axes]), math.prod(rest[layout.fan_in_axes:])


def matrix_view(x: jax.Array, layout: MatrixLayout | None) -> jax.Array:
    """x as [*stack axes, fan_in, fan_out] (x itself where `layout` is None)."""
    if layout is None:
        return x
    _, fan_in, fan_out = matrix_dims(x.shape, layout)
    return x.reshape(*x.shape[: layout.batch_axes], fan_in, fan_out)


def in_matrix_view(inner: optax.GradientTransformation,
                   layout_of: Callable[[KeyPath], MatrixLayout | None]) -> optax.GradientTransformation:
    """`inner` run on the hidden matrices' [*stack, fan_in, fan_out] views (its state kept in those shapes), its
    updates given back in the params' shapes."""

    def view(tree):
        return None if tree is None else jax.tree_util.tree_map_with_path(
            lambda path, x: matrix_view(x, layout_of(path)), tree)

    def update(updates, state, params=None):
        viewed, state = inner.update(view(updates), state, view(params))
        return jax.tree_util.tree_map(lambda u, like: u.reshape(like.shape), viewed, updates), state

    return optax.GradientTransformation(lambda params: inner.init(view(params)), update)


def newton_schulz(x_MN: jax.Array, steps: int) -> jax.Array:
    """≈ U·Vᵀ of x = U·S·Vᵀ: `steps` quintic Newton–Schulz iterations from x / ‖x‖_F, run on the wide side."""
    tall = x_MN.shape[0] > x_MN.shape[1]
    x = x_MN.T if tall else x_MN
    x = x / (jnp.linalg.norm(x) + NS_EPS)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def orthogonalized(update: jax.Array, layout: MatrixLayout, steps: int) -> jax.Array:
    """Each matrix of `update` orthogonalised and scaled by sqrt(max(1, fan_out / fan_in)) (Keller Jordan's
    shape scaling: the update's RMS grows with the output width as the matrix's spectral norm should)."""
    stack, fan_in, fan_out = matrix_dims(update.shape, layout)
    if stack == 1:  # a plain 2-D GEMM chain: XLA's CPU backend runs batched dots of one matrix ~2x slower
        ortho = newton_schulz(update.reshape(fan_in, fan_out), steps)
    else:
        ortho = jax.vmap(lambda m: newton_schulz(m, steps))(update.reshape(stack, fan_in, fan_out))
    return (ortho * math.sqrt(max(1.0, fan_out / fan_in))).reshape(update.shape).astype(update.dtype)


class MuonState(NamedTuple):
    momentum: optax.Updates


def scale_by_muon(layout_of: Callable[[KeyPath], MatrixLayout | None], momentum: float,
                  ns_steps: int) -> optax.GradientTransformation:
    """Muon's direction: m ← β·m + (1−β)·g, then the Nesterov mix (1−β)·g + β·m orthogonalised per matrix."""

    def init(params):
        return MuonState(jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        moments = jax.tree_util.tree_map(lambda m, g: momentum * m + (1 - momentum) * g, state.momentum, updates)
        nesterov = jax.tree_util.tree_map(lambda m, g: momentum * m + (1 - momentum) * g, moments, updates)
        directions = jax.tree_util.tree_map_with_path(
            lambda path, u: orthogonalized(u, layout_of(path), ns_steps), nesterov)
        return directions, MuonState(moments)

    return optax.GradientTransformation(init, update)


def muon(t: TrainConfig, layout_of: Callable[[KeyPath], MatrixLayout | None],
         lr_multipliers: Callable[[tuple], float] | None = None) -> optax.GradientTransformation:
    """Muon on the hidden matrices (decay lr_muon·wd, schedule peaking at train.muon_lr), AdamW (with the μP
    multipliers when given) on every other param."""
    hidden = _finish([scale_by_muon(layout_of, t.muon_momentum, t.muon_ns_steps)], t, scaled_schedule(t, t.muon_lr),
                     None)

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "adamw" if layout_of(path) is None else "muon", params)

    return optax.partition({"muon": hidden, "adamw": adamw(t, lr_multipliers)}, labels)


# --- the optimizer of a run -------------------------------------------------------------------------------------

def sgd_lr_multipliers(model: ModelConfig) -> Callable[[KeyPath], float] | None:
    """μP for SGD (the `mup` package's MuSGD): hidden matrices keep lr, every other param takes lr·m; None under sp."""
    if model.parametrization != "mup":
        return None
    m = width_multiplier(model)
    return lambda path: 1.0 if is_hidden_matrix(path) else m


def optimizer_lr_multipliers(cfg: Config) -> Callable[[KeyPath], float] | None:
    """The μP per-leaf lr multipliers of `train.optimizer` (None under sp): Adam's (1/m on hidden matrices) for
    adamw, lion and adafactor, whose steps are normalised per coordinate; MuSGD's for sgd; for muon Adam's on the
    AdamW side only (1 there), the hidden matrices' width dependence being in Muon's shape scaling."""
    if cfg.train.optimizer == "sgd":
        return sgd_lr_multipliers(cfg.model)
    return adam_lr_multipliers(cfg.model)


def direction_and_decay(t: TrainConfig, lr_multipliers: Callable[[tuple], float] | None = None,
                        layout_of: Callable[[KeyPath], MatrixLayout | None] | None = None
                        ) -> optax.GradientTransformation:
    """`train.optimizer`'s chain after clipping."""
    if t.optimizer == "muon":
        if layout_of is None:
            raise ValueError("train.optimizer=muon needs the hidden matrices' layouts (hidden_matrix_layouts)")
        return muon(t, layout_of, lr_multipliers)
    if t.optimizer == "adafactor":
        return adafactor(t, lr_multipliers, layout_of)
    return {"adamw": adamw, "lion": lion, "sgd": sgd}[t.optimizer](t, lr_multipliers)


def make_optimizer(t: TrainConfig, trainable=None, lr_multipliers: Callable[[tuple], float] | None = None,
                   layout_of: Callable[[KeyPath], MatrixLayout | None] | None = None) -> optax.GradientTransformation:
    """`train.optimizer` after global-norm clipping; with a `trainable` bool tree, frozen leaves get no update and
    no state; with `lr_multipliers` (key path -> float, e.g. `optimizer_lr_multipliers(cfg)`), per-leaf learning
    rates; `layout_of` (`hidden_matrix_layouts(cfg.model)`) says which params Muon orthogonalises (and Adafactor
    factors) as which matrices.

    The state's structure does not depend on the values of the optimizer settings (clipping is always in the chain,
    inf when off; the multipliers add one stateless stage whatever their values), so a resumed run may change lr,
    clipping, decay, betas or momenta and still restore its state. AdamW's state is what it was before the other
    optimizers existed."""
    optimizer = optax.chain(
        optax.clip_by_global_norm(t.grad_clip if t.grad_clip > 0 else float("inf")),
        direction_and_decay(t, lr_multipliers, layout_of))
    if trainable is None:
        return optimizer
    labels = jax.tree_util.tree_map(lambda keep: "train" if keep else "frozen", trainable)
    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def run_optimizer(cfg: Config, trainable=None) -> optax.GradientTransformation:
    """The optimizer a run of `cfg` trains with: `train.optimizer` with its μP multipliers and, for Muon and
    Adafactor, the model's hidden-matrix layouts."""
    layout_of = hidden_matrix_layouts(cfg.model) if cfg.train.optimizer in ("muon", "adafactor") else None
    return make_optimizer(cfg.train, trainable, optimizer_lr_multipliers(cfg), layout_of)
