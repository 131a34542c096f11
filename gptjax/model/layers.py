"""Building blocks: an einsum Dense with logical axes, norms, MLPs and position encodings."""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model.lora import LoraSpec, lora_a_init
from gptjax.parallel.rules import constrain, target_platform

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def normal_init(std: float):
    return nn.initializers.normal(stddev=std)


def _triple32(x_u32: jax.Array) -> jax.Array:
    """Chris Wellons' triple32 integer hash: a bijection on uint32 with near-ideal avalanche."""
    x_u32 = (x_u32 ^ (x_u32 >> 17)) * jnp.uint32(0xED5AD4BB)
    x_u32 = (x_u32 ^ (x_u32 >> 11)) * jnp.uint32(0xAC4C1B51)
    x_u32 = (x_u32 ^ (x_u32 >> 15)) * jnp.uint32(0x31848BAB)
    return x_u32 ^ (x_u32 >> 14)


def dropout_keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Bernoulli(1 - rate) mask: a counter-based hash of each element's index, keyed by two threefry words.

    jax.random.bernoulli runs threefry for every element: ~160 ms on a 2-core CPU for one 32x6x256x256 attention
    dropout against ~5 ms for this (a sixth of nanoGPT's 6x384 step went to it). The hash passes the mean,
    per-seed variance and lag-1 correlation checks in tests/test_model.py, which is what dropout needs."""
    size = math.prod(shape)
    if size >= 1 << 32:
        return jax.random.bernoulli(rng, 1.0 - rate, shape)
    seed = jax.random.bits(rng, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, size).reshape(shape)
    bits = _triple32(_triple32(index ^ seed[0]) + seed[1])
    return bits >= jnp.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))


def dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Inverted dropout: zero with probability `rate`, scale survivors by 1 / (1 - rate)."""
    keep = dropout_keep_mask(rng, rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class Dropout(nn.Module):
    """Dropout drawing its mask with `dropout_keep_mask` from the 'dropout' rng stream."""

    rate: float
    deterministic: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, self.make_rng("dropout"))


def _transposed_specs(spec: str) -> tuple[str, str]:
    """For "a,b->c", the specs of the two cotangents: "c,b->a" and "c,a->b"."""
    inputs, out = spec.split("->")
    a, b = inputs.split(",")
    return f"{out},{b}->{a}", f"{out},{a}->{b}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _low_precision_einsum(spec: str, dtype, a_dtype, b_dtype, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _low_precision_einsum_fwd(spec, dtype, a_dtype, b_dtype, a, b):
    a_lp, b_lp = a.astype(dtype), b.astype(dtype)
    return jnp.einsum(spec, a_lp, b_lp, preferred_element_type=jnp.float32), (a_lp, b_lp)


def _low_precision_einsum_bwd(spec, dtype, a_dtype, b_dtype, residuals, g):
    a_lp, b_lp = residuals
    spec_a, spec_b = _transposed_specs(spec)
    g_lp = g.astype(dtype)
    da = jnp.einsum(spec_a, g_lp, b_lp, preferred_element_type=jnp.float32).astype(a_dtype)
    db = jnp.einsum(spec_b, g_lp, a_lp, preferred_element_type=jnp.float32).astype(b_dtype)
    return da, db


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


def einsum_f32(spec: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    """einsum of `a` and `b` cast to `dtype`, accumulated and returned in float32 — its gradients too.

    Plain autodiff of a bf16 dot with a float32 result transposes it into dots of a float32 cotangent with a bf16
    operand, which XLA's CPU backend runs as float32 GEMMs. On CPU the backward dots here take the cotangent in
    `dtype` and accumulate in float32 too, so training runs all three GEMMs of a layer at the bf16 rate (~1.4x a
    6x384 step); cotangents come back in each input's own dtype (float32 for float32 master weights). TPU and GPU
    compilers already run those dots in bf16, and remat's dot-saving policies do not see into a custom_vjp, so
    there the plain einsum stays. `spec` contracts two operands and sums no index away inside one of them."""
    if jnp.dtype(dtype) == jnp.float32 or target_platform() != "cpu":
        return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)
    return _low_precision_einsum(spec, jnp.dtype(dtype), a.dtype, b.dtype, a, b)


def matmul_2d(x: jax.Array, kernel: jax.Array, n_in: int, dtype) -> jax.Array:
    """x [..., *in] · kernel [*in, *out] -> [..., *out] (float32) as one 2-D GEMM.

    Flattening to [M, K] x [K, N] is the canonical form every backend maps to its fastest matmul; XLA's CPU
    backend runs the equivalent multi-dimensional dot_general (and its gradients) about 2x slower."""
    lead, in_shape = x.shape[: x.ndim - n_in], x.shape[x.ndim - n_in:]
    out_shape = kernel.shape[n_in:]
    k_in, k_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    y = einsum_f32("mk,kn->mn", x.reshape(-1, k_in), kernel.reshape(k_in, k_out), dtype)
    return y.reshape(*lead, *out_shape)


class Dense(nn.Module):
    """y = x · W (+ b) contracting the last `len(in_shape)` dims of x; W carries logical axis names.

    Matmul inputs are cast to `dtype` and accumulate in float32 (fast bf16 on TPU/GPU and on AMX CPUs)."""

    out_shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    n_in: int = 1
    use_bias: bool = False
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    lora: LoraSpec | None = None  # a LoRA adapter beside the kernel (gptjax.model.lora)
    deterministic: bool = True  # False: LoRA dropout on (rng stream 'dropout')

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[-self.n_in:]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(normal_init(self.init_std), self.kernel_axes),
            tuple(in_shape) + tuple(self.out_shape),
            jnp.float32,
        )
        y = matmul_2d(x, kernel, self.n_in, self.dtype)
        if self.lora is not None:
            y = y + self._adapter(x, tuple(in_shape))
        if self.use_bias:
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[self.n_in:]),
                tuple(self.out_shape), jnp.float32,
            )
            y = y + bias
        return y.astype(self.dtype)

    def _adapter(self, x: jax.Array, in_shape: tuple[int, ...]) -> jax.Array:
        """scale · dropout(x) · A · B (float32), A [*in, r] and B [r, *out] with the kernel's logical axes."""
        spec = self.lora
        in_axes, out_axes = self.kernel_axes[: self.n_in], self.kernel_axes[self.n_in:]
        a = self.param("lora_a", nn.with_logical_partitioning(lora_a_init(int(np.prod(in_shape))), (*in_axes, "lora")),
                       in_shape + (spec.rank,), jnp.float32)
        b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, ("lora", *out_axes)),
                       (spec.rank,) + tuple(self.out_shape), jnp.float32)
        if spec.dropout > 0.0 and not self.deterministic:
            x = dropout(x, spec.dropout, self.make_rng("dropout"))
        low_rank = matmul_2d(x, a, self.n_in, self.dtype)
        return spec.scale * matmul_2d(low_rank, b, 1, self.dtype)


class Norm(nn.Module):
    """LayerNorm or RMSNorm over the last dim, computed in float32, returned in `dtype`.

    offset=True stores the gain as w (initialised at 0) and applies 1 + w, as Gemma does."""

    kind: str = "layernorm"
    eps: float = 1e-5
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    offset: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        x32 = x.astype(jnp.float32)
        init = nn.initializers.zeros if self.offset else nn.initializers.ones
        scale = self.param("scale", nn.with_logical_partitioning(init, ("norm",)), (d,), jnp.float32)
        if self.offset:
            scale = 1.0 + scale
        if self.kind == "rmsnorm":
            y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps) * scale
        else:
            mean = jnp.mean(x32, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
            y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale
            if self.use_bias:
                y = y + self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (d,),
                                   jnp.float32)
        return y.astype(self.dtype)


class Mlp(nn.Module):
    """GELU (tanh approximation as GPT-2, or exact erf), SwiGLU or GeGLU (Gemma) feed-forward block."""

    kind: str
    gelu_approximate: bool
    d_model: int
    d_ff: int
    use_bias: bool
    init_std: float
    out_std: float
    dtype: jnp.dtype
    lora: LoraSpec | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        def dense(features, axes, std, name):
            return Dense((features,), axes, use_bias=self.use_bias, init_std=std, dtype=self.dtype, lora=self.lora,
                         deterministic=self.deterministic, name=name)

        if self.kind in ("swiglu", "geglu"):
            gate_BTF = dense(self.d_ff, ("embed", "mlp"), self.init_std, "gate")(x_BTD).astype(jnp.float32)
            up_BTF = dense(self.d_ff, ("embed", "mlp"), self.init_std, "up")(x_BTD)
            if self.kind == "swiglu":
                act_BTF = nn.silu(gate_BTF)
            else:
                act_BTF = nn.gelu(gate_BTF, approximate=self.gelu_approximate)
            h_BTF = act_BTF.astype(self.dtype) * up_BTF
        else:
            h_BTF = dense(self.d_ff, ("embed", "mlp"), self.init_std, "fc")(x_BTD)
            h_BTF = nn.gelu(h_BTF.astype(jnp.float32), approximate=self.gelu_approximate).astype(self.dtype)
        h_BTF = constrain(h_BTF, ("batch", "act_length", "act_mlp"))
        return dense(self.d_model, ("mlp", "embed"), self.out_std, "proj")(h_BTF)


def sinusoidal_table(n_positions: int, d_model: int) -> np.ndarray:
    """The fixed sin/cos position table of 'Attention Is All You Need' (sin on even, cos on odd dims)."""
    pos_P1 = np.arange(n_positions, dtype=np.float64)[:, None]
    inv_freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2, dtype=np.float64) / d_model)
    table_PD = np.zeros((n_positions, d_model), dtype=np.float64)
    table_PD[:, 0::2] = np.sin(pos_P1 * inv_freq)
    table_PD[:, 1::2] = np.cos(pos_P1 * inv_freq[: d_model // 2])
    return table_PD.astype(np.float32)


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """Unscaled rotary frequencies theta^(-2i/head_dim), i < head_dim/2 (float32, computed as HF computes them)."""
    exponents = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / np.power(np.float32(theta), exponents)).astype(np.float32)


def llama3_inv_freq(inv_freq: np.ndarray, factor: float, low_freq_factor: float, high_freq_factor: float,
                    original_positions: int) -> np.ndarray:
    """Llama 3.1's rope scaling: wavelengths longer than original/low_freq_factor are stretched by `factor`, those
    shorter than original/high_freq_factor kept, and the band between interpolated smoothly."""
    wavelen = np.float32(2 * math.pi) / inv_freq
    low_freq_wavelen, high_freq_wavelen = original_positions / low_freq_factor, original_positions / high_freq_factor
    stretched = np.where(wavelen > low_freq_wavelen, inv_freq / np.float32(factor), inv_freq)
    smooth = (original_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * stretched / np.float32(factor) + smooth * stretched
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(medium, smoothed, stretched).astype(np.float32)


def yarn_inv_freq(head_dim: int, theta: float, factor: float, original_positions: int, beta_fast: float,
                  beta_slow: float) -> np.ndarray:
    """YaRN (Peng et al. 2023): interpolated frequencies below the correction range, extrapolated above it, a linear
    ramp between (the range's ends truncated to whole dims, as transformers does by default)."""
    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original_positions / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), head_dim - 1)
    high = high + 0.001 if low == high else high
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    extrapolation = rope_inv_freq(head_dim, theta)
    extrapolation_weight = 1 - ramp
    return (extrapolation / np.float32(factor) * (1 - extrapolation_weight)
            + extrapolation * extrapolation_weight).astype(np.float32)


def rope_frequencies(cfg, local: bool = False) -> tuple[np.ndarray, float]:
    """(inverse frequencies [head_dim/2], cos/sin multiplier) of a layer's rope. `local` layers of a
    model.layer_pattern use model.rope_local_theta (0 = rope_theta) unscaled; the others model.rope_scaling."""
    if local:
        return rope_inv_freq(cfg.head_dim, cfg.rope_local_theta or cfg.rope_theta), 1.0
    inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta)
    if cfg.rope_scaling == "linear":
        return (inv_freq / np.float32(cfg.rope_factor)).astype(np.float32), 1.0
    if cfg.rope_scaling == "llama3":
        return llama3_inv_freq(inv_freq, cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                               cfg.rope_original_positions), 1.0
    if cfg.rope_scaling == "yarn":
        attention_factor = cfg.rope_attention_factor or (
            1.0 if cfg.rope_factor <= 1 else 0.1 * math.log(cfg.rope_factor) + 1.0)
        return yarn_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_factor, cfg.rope_original_positions,
                             cfg.rope_beta_fast, cfg.rope_beta_slow), attention_factor
    return inv_freq, 1.0


def rope_angles(positions_BT: jax.Array, inv_freq: np.ndarray, multiplier: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, head_dim/2] (times `multiplier`) for rotary embeddings at the given positions."""
    angles_BTH = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    return jnp.cos(angles_BTH) * multiplier, jnp.sin(angles_BTH) * multiplier


def apply_rope(x_BTNK: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array) -> jax.Array:
    """Rotates pairs (i, i + K/2) of each head vector: the 'rotate half' layout used by HF Llama."""
    half = x_BTNK.shape[-1] // 2
    x32 = x_BTNK.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    cos, sin = cos_BTH[:, :, None, :], sin_BTH[:, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BTNK.dtype)


def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi head slopes (Press et al.): a geometric sequence, interleaved for non-powers of two."""

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return np.array(power_of_two_slopes(n_heads), dtype=np.float32)
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return np.array(power_of_two_slopes(closest) + extra, dtype=np.float32)


def alibi_bias(q_pos_BT: jax.Array, k_pos_BS: jax.Array, n_heads: int) -> jax.Array:
    """Additive attention bias [B, N, T, S] = -slope_n · (q_pos - k_pos)."""
    distance_BTS = (q_pos_BT[:, :, None] - k_pos_BS[:, None, :]).astype(jnp.float32)
    slopes_N = jnp.asarray(alibi_slopes(n_heads))
    return -slopes_N[None, :, None, None] * distance_BTS[:, None, :, :]

