"""NormalFloat4 (QLoRA) block quantisation of frozen base weights.

A weight W [..., O] is cut into blocks of `block_size` consecutive elements along its
last axis (the last block zero-padded); each block keeps its absolute maximum (float32)
and every element the index of the nearest of 16 NF4 levels to w / absmax. The levels
are the quantiles of N(0, 1) rescaled to [-1, 1] with an exact zero (Dettmers et al.,
2023), so normally distributed weights use all 16 codes about equally.

    codes   uint4 [..., O]           the weight's own shape: a module that asks for its
                                     parameter by shape (flax checks it) gets a match
    absmax  float32 [..., ceil(O / block_size)]

Error bound: an element is at most half the widest gap between neighbouring levels
away from its level, times its block's absmax: the widest gap is -1 .. -0.6962, so
|w - dequant(w)| <= 0.1519 * absmax.

`NF4Tensor` is a pytree with `.astype(dtype)`, which is how every projection in the
model reads its weight (`self.param(...).astype(self.dtype)`), so a params tree holding
NF4Tensors runs through `model.apply` unchanged and each layer is dequantised inside
its own (scanned, rematerialised) step: one layer's bfloat16 weights exist at a time.
XLA stores 4-bit types one per byte on CPU; the memory plan counts half a byte, the
packed layout of accelerators.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

# bitsandbytes' NF4 table (the QLoRA paper's Appendix E values).
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)
# Half the widest gap (between -1 and -0.6962): the worst relative rounding error.
NF4_MAX_HALF_GAP = float(np.max(np.diff(NF4_LEVELS)) / 2)
DEFAULT_BLOCK_SIZE = 64


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NF4Tensor:
    """A block-quantised weight; `codes` comes first so its leaves start with the shape."""

    codes: jax.Array  # uint4, the weight's shape
    absmax: jax.Array  # float32 [..., blocks]
    block_size: int = dataclasses.field(metadata=dict(static=True), default=DEFAULT_BLOCK_SIZE)

    @property
    def shape(self):
        return self.codes.shape

    @property
    def ndim(self):
        return self.codes.ndim

    @property
    def dtype(self):
        return self.absmax.dtype  # what it dequantises to by default

    def dequantize(self, dtype=jnp.float32):
        return dequantize_nf4(self, dtype)

    def astype(self, dtype):
        return dequantize_nf4(self, dtype)


def _blocked(x, block_size):
    """[..., O] -> [..., blocks, block_size], zero-padded at the end of the last axis."""
    out = x.shape[-1]
    blocks = math.ceil(out / block_size)
    pad = blocks * block_size - out
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return x.reshape(*x.shape[:-1], blocks, block_size)


def quantize_nf4(w, block_size: int = DEFAULT_BLOCK_SIZE) -> NF4Tensor:
    """Float weight [..., O] -> NF4Tensor (nearest level per element, absmax per block)."""
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size = {block_size!r}: expected a positive integer")
    w = jnp.asarray(w)
    if w.ndim < 1 or not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(f"quantize_nf4 needs a floating-point array, got {w.dtype} {w.shape}")
    blocks = _blocked(w.astype(jnp.float32), block_size)  # [..., n, bs]
    absmax = jnp.max(jnp.abs(blocks), axis=-1)  # [..., n]
    # An all-zero block divides by 1 instead of 0; its codes are then the exact zero level.
    normalised = blocks / jnp.where(absmax > 0, absmax, 1.0)[..., None]
    # Nearest level = number of midpoints below the value (levels are sorted).
    midpoints = jnp.asarray((NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2)
    codes = jnp.searchsorted(midpoints, normalised.reshape(-1)).reshape(normalised.shape)
    codes = codes.reshape(*codes.shape[:-2], -1)[..., : w.shape[-1]]
    return NF4Tensor(codes.astype(jnp.uint4), absmax, block_size)


def dequantize_nf4(q: NF4Tensor, dtype=jnp.float32):
    """NF4Tensor -> dense array of `dtype` and the original shape (float32 arithmetic)."""
    values = jnp.asarray(NF4_LEVELS)[q.codes.astype(jnp.int32)]  # [..., O]
    blocks = _blocked(values, q.block_size) * q.absmax[..., None]
    out = q.codes.shape[-1]
    return blocks.reshape(*blocks.shape[:-2], -1)[..., :out].astype(dtype)


def nf4_bytes(shape, block_size: int = DEFAULT_BLOCK_SIZE, code_bits: int = 4) -> int:
    """Stored bytes of an NF4 weight of `shape`: packed codes + float32 absmax per block."""
    shape = tuple(shape)
    codes = math.ceil(math.prod(shape) * code_bits / 8)
    scales = math.prod(shape[:-1]) * math.ceil(shape[-1] / block_size) * 4
    return codes + scales
