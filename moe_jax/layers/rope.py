"""Rotary position embeddings with DeepSeek's YaRN long-context scaling.

DeepSeek rotates *interleaved* pairs (dimensions 2i and 2i+1), as its released
checkpoints expect. YaRN (Peng et al. 2023) keeps high-frequency dimensions as they
were trained ("extrapolation"), divides low-frequency ones by the context factor
("interpolation"), blends the two with a linear ramp between the correction dimensions
given by beta_fast and beta_slow, and compensates the flatter attention distribution by
scaling logits with mscale(factor)^2 (folded into the softmax scale).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """Attention-temperature correction: 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1)."""
    if factor <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def _correction_dim(num_rotations: float, dim: int, base: float, original_max_position: int) -> float:
    """The rotary dimension whose wavelength fits `num_rotations` times in the original context."""
    return (dim * math.log(original_max_position / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def yarn_correction_range(beta_fast, beta_slow, dim, base, original_max_position):
    low = math.floor(_correction_dim(beta_fast, dim, base, original_max_position))
    high = math.ceil(_correction_dim(beta_slow, dim, base, original_max_position))
    return max(low, 0), min(high, dim - 1)


def rope_inv_freq(m) -> np.ndarray:
    """Inverse frequencies [R/2] for the rope part of the head (R = qk_rope_head_dim)."""
    dim = m.qk_rope_head_dim
    base = m.rope_theta
    extrapolation = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if m.rope_scaling != "yarn" or m.rope_factor == 1.0:
        return extrapolation.astype(np.float32)
    interpolation = extrapolation / m.rope_factor
    low, high = yarn_correction_range(m.rope_beta_fast, m.rope_beta_slow, dim, base,
                                      m.rope_original_max_position)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    keep_extrapolated = 1.0 - ramp  # 1 for fast-rotating dims, 0 for slow ones
    inv_freq = interpolation * (1.0 - keep_extrapolated) + extrapolation * keep_extrapolated
    return inv_freq.astype(np.float32)


def rope_cos_sin_scale(m) -> float:
    """Scale applied to cos/sin: mscale(factor, mscale) / mscale(factor, mscale_all_dim)."""
    if m.rope_scaling != "yarn":
        return 1.0
    return yarn_mscale(m.rope_factor, m.rope_mscale) / yarn_mscale(m.rope_factor, m.rope_mscale_all_dim)


def softmax_scale(m) -> float:
    """1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2 under YaRN."""
    scale = (m.qk_nope_head_dim + m.qk_rope_head_dim) ** -0.5
    if m.rope_scaling == "yarn" and m.rope_mscale_all_dim:
        scale *= yarn_mscale(m.rope_factor, m.rope_mscale_all_dim) ** 2
    return scale


def apply_rope(x, positions, inv_freq, cos_sin_scale: float = 1.0):
    """Rotate interleaved pairs of the last axis.

    x: [..., T, H, R] or [..., T, R]; positions: [..., T] integer; inv_freq: [R/2].
    """
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [..., T, R/2]
    cos = jnp.cos(angles) * cos_sin_scale
    sin = jnp.sin(angles) * cos_sin_scale
    if x.ndim == positions.ndim + 2:  # a heads axis sits between T and R
        cos, sin = cos[..., None, :], sin[..., None, :]
    x32 = x.astype(jnp.float32)
    even, odd = x32[..., 0::2], x32[..., 1::2]
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)
