"""Grouped SwiGLU experts: each assignment goes through its own expert, no padding to a
capacity.

Shapes: S tokens, D model, E experts, F expert ffn, R rows of the expert-sorted buffer,
T rows per tile. Rows are sorted by expert: expert e owns a contiguous block of rows.

Two implementations computing the same numbers:

- `ragged_swiglu` (GPU/TPU): `jax.lax.ragged_dot` on an unpadded buffer described by
  `group_sizes [E]`. XLA lowers it to a real grouped matmul on accelerators and autodiff
  gives the grouped transposes. On CPU it lowers to a masked dense product over all E
  experts (E times the work), so there it only runs in tests.

- `tiled_moe` (CPU): gather, expert MLP and weighted combine fused in one loop, with a
  hand-written backward (`jax.custom_vjp`) of the same shape. See its docstring.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


# ----------------------------------------------------------------------------------------
# Accelerators: ragged_dot.
# ----------------------------------------------------------------------------------------


def ragged_swiglu(xs, group_sizes, gate, up, down):
    """xs: [R, D] sorted by expert; group_sizes: [E] (sum <= R); gate, up: [E, D, F];
    down: [E, F, D] -> [R, D]. Rows past sum(group_sizes) come out as zeros."""
    g = lax.ragged_dot(xs, gate, group_sizes)  # [R, F]
    u = lax.ragged_dot(xs, up, group_sizes)  # [R, F]
    return lax.ragged_dot(jax.nn.silu(g) * u, down, group_sizes)  # [R, D]


# ----------------------------------------------------------------------------------------
# CPU: one loop over experts and their tiles, fused gather -> SwiGLU -> combine.
# ----------------------------------------------------------------------------------------


def _dot(a, b, out_dtype):
    """[T, K] @ [K, N] -> [T, N]."""
    return jnp.matmul(a, b, preferred_element_type=out_dtype)


def _dot_tn(a, b, out_dtype):
    """a.T @ b, contracting the tile axis: [T, M], [T, N] -> [M, N]."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=out_dtype)


def _dot_nt(a, b, out_dtype):
    """a @ b.T: [T, N], [M, N] -> [T, M]."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=out_dtype)


def _gather_rows(table, index):
    """table[index] for index [T]; index == len(table) marks a padding row -> zeros."""
    return table.at[index].get(mode="fill", fill_value=0, unique_indices=False)


def _scatter_add_rows(table, index, rows):
    """table[index] += rows; padding rows (index == len(table)) are dropped. The tokens in
    a tile are distinct (a token picks an expert at most once), so no two rows collide."""
    return table.at[index].add(rows.astype(table.dtype), mode="drop", unique_indices=True)


def _for_each_tile(block_start, block_rows, tiles, body, carry):
    """Run `body(row, size, carry)` over one expert's block of rows, `tiles[0]` rows at a
    time while that many remain, then `tiles[1]`, ... `block_rows` is a multiple of
    tiles[-1], and every tile size a multiple of the next, so the block is covered exactly.
    Big tiles first: on CPU a [256, D] matmul runs markedly faster per FLOP than four
    [64, D] ones, while the small last tile keeps padding below tiles[-1] rows per expert.
    """
    row = block_start
    remaining = block_rows
    for size in tiles:
        count = remaining // size

        def step(i, carry, size=size, row=row):
            return body(row + i * size, size, carry)

        carry = lax.fori_loop(0, count, step, carry)
        row = row + count * size
        remaining = remaining - count * size
    return carry


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def tiled_moe(x, row_weight, row_token, block_start, block_rows, gate, up, down, tiles):
    """y[s] = sum over rows r with row_token[r] == s of row_weight[r] * SwiGLU_e(r)(x[s]).

    x: [S, D]; row_weight: [R] (0 on padding rows); row_token: [R] int, S on padding
    rows; block_start, block_rows: [E] int, expert e owns rows [start, start + rows), a
    multiple of tiles[-1]; gate, up: [E, D, F]; down: [E, F, D]; tiles: static tile
    sizes, decreasing, each a multiple of the next -> y: [S, D] float32.

    A `lax.scan` over experts takes one expert's weights per step as its scanned input (a
    slice, never a gather of weights); inside, a loop over that expert's tiles gathers
    the tile's token rows from x, runs gate/up, SiLU and down while the tile is in cache,
    and scatter-adds the weighted result into y. Nothing of size [R, D] is materialised:
    only the pre-activations [R, 2F] are kept for the backward.
    """
    y, _ = _tiled_forward(x, row_weight, row_token, block_start, block_rows, gate, up, down, tiles)
    return y


def _tiled_forward(x, row_weight, row_token, block_start, block_rows, gate, up, down, tiles):
    num_rows = row_token.shape[0]
    ffn = gate.shape[-1]
    dtype = x.dtype

    def expert_step(carry, expert):
        start, rows, w_gate, w_up, w_down = expert
        w_gate_up = jnp.concatenate([w_gate, w_up], axis=1)  # [D, 2F]

        def tile(row, size, carry):
            y, pre = carry
            token = lax.dynamic_slice_in_dim(row_token, row, size)  # [T]
            xt = _gather_rows(x, token)  # [T, D]
            gu = _dot(xt, w_gate_up, dtype)  # [T, 2F]
            h = jax.nn.silu(gu[:, :ffn]) * gu[:, ffn:]  # [T, F]
            out = _dot(h, w_down, jnp.float32)  # [T, D]
            weight = lax.dynamic_slice_in_dim(row_weight, row, size).astype(jnp.float32)  # [T]
            y = _scatter_add_rows(y, token, out.astype(dtype).astype(jnp.float32) * weight[:, None])
            pre = lax.dynamic_update_slice_in_dim(pre, gu, row, 0)
            return y, pre

        return _for_each_tile(start, rows, tiles, tile, carry), None

    init = (jnp.zeros(x.shape, jnp.float32), jnp.zeros((num_rows, 2 * ffn), dtype))
    (y, pre), _ = lax.scan(expert_step, init, (block_start, block_rows, gate, up, down))
    return y, pre


def _tiled_fwd(x, row_weight, row_token, block_start, block_rows, gate, up, down, tiles):
    y, pre = _tiled_forward(x, row_weight, row_token, block_start, block_rows, gate, up, down, tiles)
    # Keep the pre-activations (R 2F numbers), not the [R, D] outputs: recomputing them
    # would add a third of the forward FLOPs to the backward, and the weights' gradient
    # needs only <out, dy> = <h, dy @ down^T>, which the backward computes anyway.
    return y, (x, row_weight, row_token, block_start, block_rows, gate, up, down, pre)


def _tiled_bwd(tiles, residuals, dy):
    x, row_weight, row_token, block_start, block_rows, gate, up, down, pre = residuals
    d_model, ffn = gate.shape[1:]
    dtype = x.dtype
    acc = jnp.float32  # weight gradients sum over many tiles: accumulate in float32
    # The barrier makes dy a real buffer: when dy is a broadcast (the gradient of sum(y)),
    # XLA would otherwise sink the broadcast into the loop and rebuild [S, D] every expert.
    dy = lax.optimization_barrier(dy.astype(acc))

    def expert_step(carry, expert):
        start, rows, w_gate, w_up, w_down = expert
        w_gate_up = jnp.concatenate([w_gate, w_up], axis=1)  # [D, 2F]

        def tile(row, size, carry):
            dx, d_row_weight, d_gate_up, d_down = carry
            token = lax.dynamic_slice_in_dim(row_token, row, size)  # [T]
            xt = _gather_rows(x, token)  # [T, D]
            dyt = _gather_rows(dy, token)  # [T, D]
            weight = lax.dynamic_slice_in_dim(row_weight, row, size).astype(acc)[:, None]  # [T, 1]
            gu = lax.dynamic_slice_in_dim(pre, row, size).astype(acc)  # [T, 2F]
            g, u = gu[:, :ffn], gu[:, ffn:]
            sig = jax.nn.sigmoid(g)
            silu = g * sig
            h = silu * u  # [T, F]
            dh_unweighted = _dot_nt(dyt.astype(dtype), w_down, acc)  # [T, F] = dy @ down^T
            # d loss / d row_weight = <out, dy> = <h, dy @ down^T>: F numbers, not D.
            d_row_weight = lax.dynamic_update_slice_in_dim(
                d_row_weight, jnp.sum(h * dh_unweighted, axis=1), row, 0)
            d_down = d_down + _dot_tn(h.astype(dtype), (weight * dyt).astype(dtype), acc)  # [F, D]
            dh = weight * dh_unweighted  # [T, F]
            dg = dh * u * sig * (1.0 + g * (1.0 - sig))  # silu'(g) = s (1 + g (1 - s))
            du = dh * silu
            dgu = jnp.concatenate([dg, du], axis=1).astype(dtype)  # [T, 2F]
            d_gate_up = d_gate_up + _dot_tn(xt, dgu, acc)  # [D, 2F]
            dx = _scatter_add_rows(dx, token, _dot_nt(dgu, w_gate_up, acc))  # [T, D]
            return dx, d_row_weight, d_gate_up, d_down

        dx, d_row_weight = carry
        init = (dx, d_row_weight, jnp.zeros((d_model, 2 * ffn), acc), jnp.zeros((ffn, d_model), acc))
        dx, d_row_weight, d_gate_up, d_down = _for_each_tile(start, rows, tiles, tile, init)
        grads = (d_gate_up[:, :ffn].astype(gate.dtype), d_gate_up[:, ffn:].astype(up.dtype),
                 d_down.astype(down.dtype))
        return (dx, d_row_weight), grads

    init = (jnp.zeros(x.shape, acc), jnp.zeros(row_weight.shape, acc))
    (dx, d_row_weight), (d_gate, d_up, d_down) = lax.scan(
        expert_step, init, (block_start, block_rows, gate, up, down))
    return (dx.astype(x.dtype), d_row_weight.astype(row_weight.dtype), None, None, None,
            d_gate, d_up, d_down)


tiled_moe.defvjp(_tiled_fwd, _tiled_bwd)
