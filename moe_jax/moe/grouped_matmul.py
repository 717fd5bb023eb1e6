"""Grouped SwiGLU experts: each assignment goes through its own expert, no padding to a
capacity.

Shapes: S tokens, D model, E experts, F expert ffn, R rows of the expert-sorted buffer,
T rows per tile. Rows are sorted by expert: expert e owns a contiguous block of rows.

Two implementations computing the same numbers:

- `ragged_swiglu` (GPU/TPU): three grouped matmuls on an unpadded buffer described by
  `group_sizes [E]`, each a tokamax Pallas kernel or `jax.lax.ragged_dot`
  (`ragged_kernels` says which and why); autodiff gives the grouped transposes.

- `tiled_moe` (CPU): gather, expert MLP and weighted combine fused per tile, with a
  hand-written backward (`jax.custom_vjp`) of the same shape. See its docstring.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from moe_jax.moe import ragged_kernels
from moe_jax.quant import fp8 as fp8_quant


# ----------------------------------------------------------------------------------------
# Accelerators: ragged dots.
# ----------------------------------------------------------------------------------------


def ragged_swiglu(xs, group_sizes, gate, up, down, fp8: bool = False, implementation: str = "ragged_dot"):
    """xs: [R, D] sorted by expert; group_sizes: [E] (sum <= R); gate, up: [E, D, F];
    down: [E, F, D] -> [R, D]. Rows past sum(group_sizes) come out as zeros.

    implementation: "tokamax" or "ragged_dot" (`ragged_kernels`).
    fp8: the forward GEMM inputs rounded as moe_jax.quant.fp8 rounds them (weights in
    128 x 128 blocks per expert, rows in 1 x 128 tiles); the backward is the ragged dot's
    own transpose in high precision, with the rounding passed straight through.
    """
    if fp8:
        gate, up, down = (fp8_quant.quantize_weight_ste(w) for w in (gate, up, down))
        xs = fp8_quant.quantize_ste(xs, fp8_quant.ACTIVATION_TILE)
    dot = functools.partial(ragged_kernels.ragged_dot, group_sizes=group_sizes,
                            implementation=implementation)
    g = dot(xs, gate)  # [R, F]
    u = dot(xs, up)  # [R, F]
    h = jax.nn.silu(g) * u
    if fp8:
        h = fp8_quant.quantize_ste(h, fp8_quant.ACTIVATION_TILE)
    return dot(h, down)  # [R, D]


# ----------------------------------------------------------------------------------------
# CPU: one loop per tile size, each step one tile of one expert, gather -> SwiGLU -> combine
# fused.
# ----------------------------------------------------------------------------------------


# With fp8, the weights come in already rounded to their 128 x 128 blocks
# (`fp8_quant.quantize_weight_ste`, outside the kernel) and each GEMM rounds its activation
# inputs along the axis it contracts: 1 x 128 tiles over K, 128 x 1 tiles over the tile
# rows T for the weight gradients, as moe_jax.quant.fp8 does for a plain matmul.


def _fp8_dot(a, b, dims, out_dtype):
    """float32 product of already-rounded operands (see above), cast to out_dtype."""
    out = lax.dot_general(a.astype(jnp.float32), b.astype(jnp.float32), (dims, ((), ())))
    return out.astype(out_dtype)


def _dot(a, b, out_dtype, fp8=False):
    """[T, K] activations @ [K, N] weight -> [T, N]."""
    if fp8:
        return _fp8_dot(fp8_quant.activation_rows(a), b, ((1,), (0,)), out_dtype)
    return jnp.matmul(a, b, preferred_element_type=out_dtype)


def _dot_tn(a, b, out_dtype, fp8=False):
    """a.T @ b, contracting the tile axis: [T, M], [T, N] activations -> [M, N]."""
    if fp8:
        return _fp8_dot(fp8_quant.activation_columns(a), fp8_quant.activation_columns(b),
                        ((0,), (0,)), out_dtype)
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=out_dtype)


def _dot_nt(a, b, out_dtype, fp8=False):
    """a @ b.T: [T, N] activations, [M, N] weight -> [T, M]."""
    if fp8:
        return _fp8_dot(fp8_quant.activation_rows(a), b, ((1,), (1,)), out_dtype)
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=out_dtype)


def _gather_rows(table, index):
    """table[index] for index [T]; index == len(table) marks a padding row -> zeros."""
    return table.at[index].get(mode="fill", fill_value=0)


def _scatter_add_rows(table, index, rows):
    """table[index] += rows; rows with index == len(table) are dropped. A token picks an
    expert at most once, so the other indices of one tile are distinct."""
    return table.at[index].add(rows.astype(table.dtype), mode="drop", unique_indices=True)


def _to_bits(a):
    """16-bit floats travel through loop carries as their bits (uint16): XLA:CPU has no
    bfloat16 dynamic-update-slice and would convert the whole carried buffer to float32
    and back at every loop step."""
    return lax.bitcast_convert_type(a, jnp.uint16) if a.dtype.itemsize == 2 else a


def _from_bits(a, dtype):
    return lax.bitcast_convert_type(a, dtype) if a.dtype != dtype else a


def _rows(a, start, size):
    """Rows [start, start + size) of a. A tile never reaches past its expert's block, so
    the slice is never clamped."""
    return lax.dynamic_slice_in_dim(a, start, size)


def _for_each_tile(block_start, block_rows, max_tile, align, tile_fn, carry):
    """carry = tile_fn(carry, e, start, size) for every tile of every expert's block of
    rows [start, start + rows): one rest tile of rows mod max_tile rows (when not 0) and
    rows // max_tile full tiles of max_tile rows.

    Tiles are grouped by size, one `fori_loop` per size (align, 2 align, ...,
    max_tile): every matmul has a static shape that is exactly its tile's, with no
    padding to a bigger tile, no switch over sizes and no masking. A loop step touches
    only its own tile's rows; the experts are visited in order of their rest size.
    """
    num_sizes = max_tile // align
    num_full = block_rows // max_tile  # [E]
    rest = block_rows - num_full * max_tile  # [E], a multiple of align in [0, max_tile)
    rest_start = block_start + num_full * max_tile  # [E]
    size_class = jnp.where(rest > 0, rest // align - 1, num_sizes - 1)  # [E]; rest 0: none
    by_rest = jnp.argsort(size_class, stable=True).astype(jnp.int32)  # [E]
    class_end = jnp.cumsum(jnp.bincount(size_class, length=num_sizes)).astype(jnp.int32)
    for c in range(num_sizes - 1):  # rest tiles of (c + 1) * align rows
        def rest_tile(i, carry, size=(c + 1) * align):
            e = by_rest[i]
            return tile_fn(carry, e, rest_start[e], size)

        carry = lax.fori_loop(class_end[c - 1] if c else 0, class_end[c], rest_tile, carry)

    def full_tiles(e, carry):  # few experts have any at the default tiling
        return lax.fori_loop(0, num_full[e], lambda j, carry: tile_fn(
            carry, e, block_start[e] + j * max_tile, max_tile), carry)

    return lax.fori_loop(0, block_start.shape[0], full_tiles, carry)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def tiled_moe(x, row_weight, row_token, block_start, block_rows, gate, up, down, max_tile, align,
              fp8=False):
    """y[s] = sum over rows r with row_token[r] == s of row_weight[r] * SwiGLU_e(r)(x[s]).

    x: [S, D]; row_weight: [R] (0 on padding rows); row_token: [R] int, S on padding
    rows; block_start, block_rows: [E] int: expert e owns rows [start, start + rows), a
    multiple of `align`; gate, up: [E, D, F]; down: [E, F, D]; max_tile: static, a
    multiple of align -> y: [S, D] float32.

    Each tile (`_for_each_tile`) gathers its tokens from x, runs gate, up, SiLU and down
    while the tile is in cache, and scatter-adds the weighted result into y. Its
    expert's weights are sliced out (a copy of D x F numbers per matrix, never a gather
    over experts). Nothing of size [R, D] is materialised; under differentiation the
    pre-activations gate and up ([R, F] each) are kept for the backward.

    fp8 (static): every GEMM, forward and backward, rounds its activation inputs as
    moe_jax.quant.fp8 does; the caller passes weights already rounded to their blocks.
    """
    y, _ = _tiled_forward(x, row_weight, row_token, block_start, block_rows, gate, up, down,
                          max_tile, align, keep_pre=False, fp8=fp8)
    return y


def _tiled_forward(x, row_weight, row_token, block_start, block_rows, gate, up, down, max_tile, align,
                   keep_pre, fp8):
    """-> (y [S, D] float32, (gate, up) pre-activations ([R, F] each, in `_to_bits` form)
    if keep_pre else None)."""
    dtype = x.dtype

    def tile(carry, e, start, size):
        y, pre = carry
        token = _rows(row_token, start, size)  # [T]
        xt = _gather_rows(x, token)  # [T, D]
        g = _dot(xt, gate[e], dtype, fp8)  # [T, F]
        u = _dot(xt, up[e], dtype, fp8)  # [T, F]
        h = jax.nn.silu(g) * u
        out = _dot(h, down[e], dtype, fp8)  # [T, D], rounded like the reference's h @ w_down
        weight = _rows(row_weight, start, size).astype(jnp.float32)[:, None]  # [T, 1]
        y = _scatter_add_rows(y, token, out.astype(jnp.float32) * weight)
        if keep_pre:
            pre = tuple(lax.dynamic_update_slice_in_dim(p, _to_bits(a), start, 0)
                        for p, a in zip(pre, (g, u)))
        return y, pre

    num_rows, ffn = row_token.shape[0], gate.shape[-1]
    pre = ((_to_bits(jnp.zeros((num_rows, ffn), dtype)),) * 2) if keep_pre else None
    return _for_each_tile(block_start, block_rows, max_tile, align, tile,
                          (jnp.zeros(x.shape, jnp.float32), pre))


def _tiled_fwd(x, row_weight, row_token, block_start, block_rows, gate, up, down, max_tile, align,
               fp8=False):
    y, pre = _tiled_forward(x, row_weight, row_token, block_start, block_rows, gate, up, down,
                            max_tile, align, keep_pre=True, fp8=fp8)
    # Keep the pre-activations (R 2F numbers), not the [R, D] outputs: recomputing them
    # would add a third of the forward FLOPs to the backward, and the gradient of a row
    # weight needs only <out, dy> = <h, dy @ down^T>, which the backward computes anyway.
    return y, (x, row_weight, row_token, block_start, block_rows, gate, up, down, pre)


def _tiled_bwd(max_tile, align, fp8, residuals, dy):
    x, row_weight, row_token, block_start, block_rows, gate, up, down, pre = residuals
    dtype, acc = x.dtype, jnp.float32  # weight gradients sum over tiles: accumulate in float32
    # The barrier makes dy a real buffer: when dy is a broadcast (the gradient of sum(y)),
    # XLA would otherwise sink the broadcast into the loop and rebuild [S, D] per tile.
    dy = lax.optimization_barrier(dy.astype(acc))

    def tile(carry, e, start, size):
        dx, d_row_weight, d_gate, d_up, d_down = carry
        token = _rows(row_token, start, size)  # [T]
        weight = _rows(row_weight, start, size).astype(acc)[:, None]  # [T, 1]
        g, u = (_from_bits(_rows(p, start, size), dtype).astype(acc) for p in pre)  # [T, F]
        xt = _gather_rows(x, token)  # [T, D]
        dyt = _gather_rows(dy, token)  # [T, D]
        sig = jax.nn.sigmoid(g)
        silu = g * sig
        h = silu * u  # [T, F]
        dh_unweighted = _dot_nt(dyt.astype(dtype), down[e], acc, fp8)  # [T, F] = dy @ down^T
        # d loss / d weight = <out, dy> = <h, dy @ down^T>: a sum over F numbers, not D.
        d_row_weight = lax.dynamic_update_slice_in_dim(
            d_row_weight, jnp.sum(h * dh_unweighted, axis=1), start, 0)
        dh = weight * dh_unweighted  # [T, F]
        dg = (dh * u * sig * (1.0 + g * (1.0 - sig))).astype(dtype)  # silu'(g) = s (1 + g (1 - s))
        du = (dh * silu).astype(dtype)
        dxt = _dot_nt(dg, gate[e], acc, fp8) + _dot_nt(du, up[e], acc, fp8)  # [T, D]
        dx = _scatter_add_rows(dx, token, dxt)
        d_gate = d_gate.at[e].add(_dot_tn(xt, dg, acc, fp8))  # [D, F]
        d_up = d_up.at[e].add(_dot_tn(xt, du, acc, fp8))  # [D, F]
        d_down = d_down.at[e].add(_dot_tn(h.astype(dtype), (weight * dyt).astype(dtype), acc, fp8))  # [F, D]
        return dx, d_row_weight, d_gate, d_up, d_down

    init = (jnp.zeros(x.shape, acc), jnp.zeros(row_weight.shape, acc),
            *(jnp.zeros(w.shape, acc) for w in (gate, up, down)))
    dx, d_row_weight, d_gate, d_up, d_down = _for_each_tile(
        block_start, block_rows, max_tile, align, tile, init)
    return (dx.astype(x.dtype), d_row_weight.astype(row_weight.dtype), None, None, None,
            d_gate.astype(gate.dtype), d_up.astype(up.dtype), d_down.astype(down.dtype))


tiled_moe.defvjp(_tiled_fwd, _tiled_bwd)
