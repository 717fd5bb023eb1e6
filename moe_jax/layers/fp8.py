"""FP8 block numerics with DeepSeek-V3's fine-grained scaling: the training matmuls and
the block quantiser that DeepSeek's FP8 checkpoints are read and written with.

Every GEMM operand is float8_e4m3fn times float32 scales, one scale per block:

- activations: one scale per 1 x 128 tile (per token, per 128 channels of the
  contracted axis), so one outlier token or channel group only coarsens its own tile;
- weights: one scale per 128 x 128 block, the layout of DeepSeek's FP8 checkpoints
  (W [M, N] as float8_e4m3fn plus `_scale_inv` S [ceil(M/128), ceil(N/128)]), which is
  also a 128 x 128 block of W^T: the backward's dgrad reuses the forward's quantised
  weight as it is. `quantize_weight` / `dequantize_weight` convert checkpoint tensors
  with the same quantiser, one row of blocks at a time.

A block's scale maps its largest magnitude to 448 (e4m3's maximum); an all-zero block
gets scale 1. Axes that are not multiples of 128 end in a partial block, as in the
checkpoints: zero padding changes neither a block's maximum nor any dot product.

Products are accumulated in float32. DeepSeek-V3 accumulates each 128-element chunk on
the tensor cores and promotes to float32 between chunks; here the dequantised operands
(q * scale, exact in float32 up to 2^-24) go through one float32 matmul, which computes
the same sum with float32 accumulation throughout. That is the CPU path, numerically
the scheme itself, with no speed-up.

Backward: like the paper, the backward GEMMs take FP8 inputs too. For y = x @ w,
dgrad dx = dy @ w^T quantises dy in 1 x 128 tiles along its contracted axis (N) and
reuses w's 128 x 128 blocks; wgrad dw = x^T @ dy contracts over tokens, so both x and
dy are quantised in 128 x 1 tiles (128 tokens per scale), as DeepSeek re-quantises the
stored activations "into 128 x 1 tiles" for it. The quantiser itself is passed straight
through (its gradient taken as the identity), the usual rule for rounding.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

E4M3 = jnp.float8_e4m3fn
FP8_DTYPE = np.dtype(E4M3)
FP8_MAX = float(jnp.finfo(E4M3).max)  # 448
BLOCK = 128
ACTIVATION_TILE = (1, BLOCK)  # per row, 128 along the contracted (last) axis
WEIGHT_BLOCK = (BLOCK, BLOCK)
WGRAD_TILE = (BLOCK, 1)  # 128 rows (tokens) per scale, per column


def scale_shape(shape, block=(BLOCK, BLOCK)) -> tuple[int, ...]:
    """Scales of a `shape` array quantised in `block`s over its trailing axes."""
    lead = len(shape) - len(block)
    return tuple(shape[:lead]) + tuple(math.ceil(s / b) for s, b in zip(shape[lead:], block))


def _array_module(x):
    """numpy for host arrays, jax.numpy otherwise. Checkpoint conversion stays in numpy:
    XLA's CPU division is not correctly rounded (x / 448 differs from IEEE in the last
    bit for about half of all inputs), and a checkpoint's scales must be exactly the
    ones DeepSeek's own tools compute."""
    return np if isinstance(x, np.ndarray) else jnp


def _blocked(x, block):
    """Pad the trailing len(block) axes to multiples of the block and split each axis a
    into (a / b, b): [..., A, B] -> [..., A/b0, b0, B/b1, b1]."""
    xp = _array_module(x)
    lead = x.ndim - len(block)
    pads = [(0, 0)] * lead + [(0, -s % b) for s, b in zip(x.shape[lead:], block)]
    x = xp.pad(x, pads)
    split = list(x.shape[:lead])
    for s, b in zip(x.shape[lead:], block):
        split += [s // b, b]
    return x.reshape(split), lead


def _quantize_blocked(x, block):
    """-> (q in the `_blocked` layout, scale broadcastable against it, the b axes)."""
    xp = _array_module(x)
    xb, lead = _blocked(x.astype(np.float32), block)
    inner = tuple(lead + 2 * i + 1 for i in range(len(block)))  # the b axes
    amax = xp.max(xp.abs(xb), axis=inner, keepdims=True)
    scale = xp.where(amax > 0, amax / xp.float32(FP8_MAX), xp.float32(1.0))
    return (xb / scale).astype(E4M3), scale, inner


def _unblocked(xb, shape):
    """Inverse of `_blocked`: merge the (a / b, b) pairs and drop the padding."""
    lead = len(shape) - (xb.ndim - len(shape))
    padded = xb.reshape(xb.shape[:lead] + tuple(
        xb.shape[lead + 2 * i] * xb.shape[lead + 2 * i + 1] for i in range(len(shape) - lead)))
    return padded[tuple(slice(0, s) for s in shape)]


def quantize(x, block):
    """x [..., A, B] (block over the trailing axes) -> (q float8_e4m3fn in x's shape,
    scale float32 of `scale_shape`), with x ~= q * scale of its block."""
    q, scale, inner = _quantize_blocked(x, block)
    return _unblocked(q, x.shape), _array_module(x).squeeze(scale, axis=inner)


def dequantize(q, scale, block, dtype=np.float32):
    """Inverse of `quantize`: q * (its block's scale), computed in float32."""
    xp = _array_module(q)
    qb, lead = _blocked(q.astype(np.float32), block)
    inner = tuple(lead + 2 * i + 1 for i in range(len(block)))
    return _unblocked(qb * xp.expand_dims(scale, inner), q.shape).astype(dtype)


def fake_quantize(x, block, dtype=np.float32):
    """x rounded to the e4m3 grid of its block's scale, as a float array. Stays in the
    blocked layout in between: no scale is ever repeated out to x's size."""
    q, scale, _ = _quantize_blocked(x, block)
    return _unblocked(q.astype(np.float32) * scale, x.shape).astype(dtype)


# ----------------------------------------------------------------------------------------
# The training matmul.
# ----------------------------------------------------------------------------------------


def _f32_dot(a, b, dims):
    return jax.lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.float32)


@jax.custom_vjp
def fp8_matmul(x, w):
    """x [M, K] @ w [K, N] -> [M, N] in x.dtype, both operands in e4m3 with fine-grained
    scales (see the module docstring), float32 accumulation."""
    return _forward(x, w)


def _forward(x, w):
    xq = fake_quantize(x, ACTIVATION_TILE)
    wq = fake_quantize(w, WEIGHT_BLOCK)
    return _f32_dot(xq, wq, ((1,), (0,))).astype(x.dtype)


def _fp8_matmul_fwd(x, w):
    # Keep the high-precision operands and re-quantise in the backward: on CPU memory is
    # not the constraint; DeepSeek keeps the FP8 copy of x to save memory instead.
    return _forward(x, w), (x, w)


def _fp8_matmul_bwd(residuals, dy):
    x, w = residuals
    wq = fake_quantize(w, WEIGHT_BLOCK)  # [K, N]; its blocks are W^T's blocks too
    dyq = fake_quantize(dy, ACTIVATION_TILE)  # [M, N], tiles along N (dgrad contracts N)
    dx = _f32_dot(dyq, wq, ((1,), (1,)))  # [M, K]
    x_t = fake_quantize(x, WGRAD_TILE)  # [M, K], tiles of 128 tokens (wgrad contracts M)
    dy_t = fake_quantize(dy, WGRAD_TILE)  # [M, N]
    dw = _f32_dot(x_t, dy_t, ((0,), (0,)))  # [K, N]
    return dx.astype(x.dtype), dw.astype(w.dtype)


fp8_matmul.defvjp(_fp8_matmul_fwd, _fp8_matmul_bwd)


def matmul(x, w, *, fp8: bool, contract: int = 1):
    """The one helper the model's projections call.

    x [..., I1..Ic] contracted with the leading `contract` axes of w [I1..Ic, O1..Oo]
    -> [..., O1..Oo], as the product of x flattened to [M, K] and w to [K, N] (FP8 with
    `fp8_matmul` when fp8=True: its tiles of 128 then run along the flattened K, as they
    do over a checkpoint's [N, K] weight matrix). Flat for the plain product too: with
    several leading axes, XLA:CPU computed the weight gradient from a transposed copy of
    the activation gradient, written element by element (the dense SwiGLU's fwd+bwd at
    [8, 256, 512] x 2048: 258 ms, against 136 ms flat, with bit-identical results). For
    weights with more axes (the attention's per-head projections) the value and input
    gradient are also bit-identical to `tensordot`'s; the weight gradient agrees to
    float32 rounding, summed in another order.
    """
    in_shape, out_shape = w.shape[:contract], w.shape[contract:]
    lead = x.shape[: x.ndim - contract]
    k, n = math.prod(in_shape), math.prod(out_shape)
    x2, w2 = x.reshape(-1, k), w.reshape(k, n)
    y = fp8_matmul(x2, w2) if fp8 else x2 @ w2
    return y.reshape(lead + out_shape)


def expert_matmul(x, w, *, fp8: bool):
    """Per-expert products x [E, C, I] @ w [E, I, O] -> [E, C, O]."""
    if not fp8:
        return jnp.einsum("eci,eio->eco", x, w)
    return jax.vmap(fp8_matmul)(x, w)


# ----------------------------------------------------------------------------------------
# Pieces for kernels with their own backward (grouped_matmul.tiled_moe): weights are
# quantised once outside the kernel, activations inside at each GEMM.
# ----------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def quantize_ste(x, block):
    """x rounded in `block`s of its trailing axes, in x.dtype; the gradient passes
    straight through."""
    return fake_quantize(x, block, x.dtype)


quantize_ste.defvjp(lambda x, block: (quantize_ste(x, block), None), lambda block, _, g: (g,))


def quantize_weight_ste(w):
    """w [..., I, O] rounded in 128 x 128 blocks of its last two axes (per expert for
    stacked experts), straight-through gradient."""
    return quantize_ste(w, WEIGHT_BLOCK)


def activation_rows(a):
    """a [T, K] quantised in 1 x 128 tiles along K: a GEMM input contracted over K."""
    return fake_quantize(a, ACTIVATION_TILE)


def activation_columns(a):
    """a [T, K] quantised in 128 x 1 tiles along T: a wgrad input contracted over T."""
    return fake_quantize(a, WGRAD_TILE)


# ----------------------------------------------------------------------------------------
# Checkpoint tensors (numpy in, numpy out): the quantiser above, in numpy, one row of
# blocks at a time so that the float32 temporary is 128 x N rather than M x N.
# ----------------------------------------------------------------------------------------


def quantize_weight(weight: np.ndarray, block=WEIGHT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """[M, N] float -> (float8_e4m3fn [M, N], scale_inv float32 [ceil(M/b0), ceil(N/b1)]):
    each block's largest magnitude maps to 448, an all-zero block gets scale 1."""
    rows = weight.shape[0]
    values, scales = [], []
    for start in range(0, rows, block[0]):
        q, s = quantize(np.asarray(weight[start:start + block[0]]), block)
        values.append(q)
        scales.append(s.astype(np.float32))
    return np.concatenate(values), np.concatenate(scales)


def dequantize_weight(weight: np.ndarray, scale_inv: np.ndarray, out_dtype=np.float32,
                      block=WEIGHT_BLOCK) -> np.ndarray:
    """weight [M, N] (float8) * scale_inv [ceil(M/b0), ceil(N/b1)] per block -> [M, N] in
    out_dtype, computed in float32 and then cast (DeepSeek's `weight_dequant` does the same)."""
    if weight.ndim != 2 or tuple(scale_inv.shape) != scale_shape(weight.shape, block):
        raise ValueError(f"fp8 weight {list(weight.shape)} needs scales of shape "
                         f"{list(scale_shape(weight.shape, block)) if weight.ndim == 2 else '?'}, "
                         f"got {list(scale_inv.shape)}")
    out = np.empty(weight.shape, out_dtype)
    for i, start in enumerate(range(0, weight.shape[0], block[0])):
        rows = slice(start, start + block[0])
        out[rows] = dequantize(np.asarray(weight[rows]), np.asarray(scale_inv[i:i + 1]), block,
                               dtype=out_dtype)
    return out
