"""Rotary position embeddings with DeepSeek's YaRN long-context scaling.

DeepSeek rotates *interleaved* pairs (dimensions 2i and 2i+1), as its released
checkpoints expect. YaRN (Peng et al. 2023) keeps high-frequency dimensions as they
were trained ("extrapolation"), divides low-frequency ones by the context factor
("interpolation"), blends the two with a linear ramp between the correction dimensions
given by beta_fast and beta_slow, and compensates the flatter attention distribution by
scaling logits with mscale(factor)^2 (folded into the softmax scale).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """The rotary embedding of a head's R rope dimensions; the model config's `rope_*`
    fields and `qk_rope_head_dim`."""

    head_dim: int  # R
    theta: float = 10000.0
    scaling: str = "none"  # or "yarn"
    factor: float = 1.0  # YaRN: new context / original context
    original_max_position: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0

    @classmethod
    def from_config(cls, m) -> "RopeConfig":
        return cls(head_dim=m.qk_rope_head_dim, theta=m.rope_theta, scaling=m.rope_scaling,
                   factor=m.rope_factor, original_max_position=m.rope_original_max_position,
                   beta_fast=m.rope_beta_fast, beta_slow=m.rope_beta_slow, mscale=m.rope_mscale,
                   mscale_all_dim=m.rope_mscale_all_dim)


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


def rope_inv_freq(rope: RopeConfig) -> np.ndarray:
    """Inverse frequencies [R/2] for the rope part of the head."""
    dim = rope.head_dim
    base = rope.theta
    extrapolation = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if rope.scaling != "yarn" or rope.factor == 1.0:
        return extrapolation.astype(np.float32)
    interpolation = extrapolation / rope.factor
    low, high = yarn_correction_range(rope.beta_fast, rope.beta_slow, dim, base,
                                      rope.original_max_position)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    keep_extrapolated = 1.0 - ramp  # 1 for fast-rotating dims, 0 for slow ones
    inv_freq = interpolation * (1.0 - keep_extrapolated) + extrapolation * keep_extrapolated
    return inv_freq.astype(np.float32)


def rope_cos_sin_scale(rope: RopeConfig) -> float:
    """Scale applied to cos/sin: mscale(factor, mscale) / mscale(factor, mscale_all_dim)."""
    if rope.scaling != "yarn":
        return 1.0
    return yarn_mscale(rope.factor, rope.mscale) / yarn_mscale(rope.factor, rope.mscale_all_dim)


def softmax_scale(qk_head_dim: int, rope: RopeConfig) -> float:
    """1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2 under YaRN."""
    scale = qk_head_dim ** -0.5
    if rope.scaling == "yarn" and rope.mscale_all_dim:
        scale *= yarn_mscale(rope.factor, rope.mscale_all_dim) ** 2
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
