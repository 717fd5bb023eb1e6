"""Grouped SwiGLU experts: each assignment goes through its own expert, no padding to a
capacity.

Shapes: S tokens, D model, E experts, F expert ffn, R rows of the expert-sorted buffer,
T rows per tile. Rows are sorted by expert: expert e owns a contiguous block of rows.

Two implementations computing the same numbers:

- `ragged_swiglu` (GPU/TPU): three grouped matmuls on an unpadded buffer described by
  `group_sizes [E]`, each a tokamax Pallas kernel or `jax.lax.ragged_dot`
  (`ragged_kernels` says which and why); autodiff gives the grouped transposes.

- `tiled_moe` (CPU): gather, expert MLP and weighted combine fused in one loop, with a
  hand-written backward (`jax.custom_vjp`) of the same shape. See its docstring.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from moe_jax.layers import fp8 as fp8_quant
from moe_jax.moe import ragged_kernels


# ----------------------------------------------------------------------------------------
# Accelerators: ragged dots.
# ----------------------------------------------------------------------------------------


def ragged_swiglu(xs, group_sizes, gate, up, down, fp8: bool = False, implementation: str = "ragged_dot"):
    """xs: [R, D] sorted by expert; group_sizes: [E] (sum <= R); gate, up: [E, D, F];
    down: [E, F, D] -> [R, D]. Rows past sum(group_sizes) come out as zeros.

    implementation: "tokamax" or "ragged_dot" (`ragged_kernels`).
    fp8: the forward GEMM inputs rounded as moe_jax.layers.fp8 rounds them (weights in
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
# CPU: a scan over experts, one loop step per tile, gather -> SwiGLU -> combine fused.
# ----------------------------------------------------------------------------------------


# With fp8, the weights come in already rounded to their 128 x 128 blocks
# (`fp8_quant.quantize_weight_ste`, outside the kernel) and each GEMM rounds its activation
# inputs along the axis it contracts: 1 x 128 tiles over K, 128 x 1 tiles over the tile
# rows T for the weight gradients, as moe_jax.layers.fp8 does for a plain matmul.


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


def _pad_rows(a, num_rows):
    return jnp.pad(a, [(0, num_rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1))


def _tile_forward(x, token, weight, w_gate_up, w_down, fp8=False):
    """One tile of one expert. token, weight: [T] -> (weight * SwiGLU(x[token]) [T, D]
    float32, pre-activations [gate | up] [T, 2F] in x.dtype)."""
    ffn = w_down.shape[0]
    xt = _gather_rows(x, token)  # [T, D]
    gu = _dot(xt, w_gate_up, x.dtype, fp8)  # [T, 2F]
    h = jax.nn.silu(gu[:, :ffn]) * gu[:, ffn:]  # [T, F]
    out = _dot(h, w_down, x.dtype, fp8)  # [T, D], rounded like the reference's h @ w_down
    return out.astype(jnp.float32) * weight.astype(jnp.float32)[:, None], gu


def _tile_backward(x, dy, token, weight, gu, w_gate_up, w_down, fp8=False):
    """Backward of `_tile_forward` given dy [S, D] float32 -> (dx rows [T, D],
    d_weight [T], d_gate_up [D, 2F], d_down [F, D]), all float32."""
    ffn = w_down.shape[0]
    dtype, acc = x.dtype, jnp.float32
    xt = _gather_rows(x, token)  # [T, D]
    dyt = _gather_rows(dy, token)  # [T, D]
    weight = weight.astype(acc)[:, None]  # [T, 1]
    g, u = gu[:, :ffn].astype(acc), gu[:, ffn:].astype(acc)  # [T, F] each
    sig = jax.nn.sigmoid(g)
    silu = g * sig
    h = silu * u  # [T, F]
    dh_unweighted = _dot_nt(dyt.astype(dtype), w_down, acc, fp8)  # [T, F] = dy @ down^T
    # d loss / d weight = <out, dy> = <h, dy @ down^T>: a sum over F numbers, not D.
    d_weight = jnp.sum(h * dh_unweighted, axis=1)  # [T]
    d_down = _dot_tn(h.astype(dtype), (weight * dyt).astype(dtype), acc, fp8)  # [F, D]
    dh = weight * dh_unweighted  # [T, F]
    dg = dh * u * sig * (1.0 + g * (1.0 - sig))  # silu'(g) = s (1 + g (1 - s))
    du = dh * silu
    dgu = jnp.concatenate([dg, du], axis=1).astype(dtype)  # [T, 2F]
    d_gate_up = _dot_tn(xt, dgu, acc, fp8)  # [D, 2F]
    dxt = _dot_nt(dgu, w_gate_up, acc, fp8)  # [T, D]
    return dxt, d_weight, d_gate_up, d_down


def _rest_tile(rest, max_tile, align, tile_fn, zeros, *operands):
    """Run `tile_fn(size, *operands)` on the first `rest` rows of [max_tile]-row operands,
    with `rest` a traced multiple of `align` in [0, max_tile): a `lax.switch` over the
    static sizes 0, align, ..., max_tile - align. Row outputs come back padded with zeros
    to max_tile rows; `zeros` (jax.ShapeDtypeStructs) is what size 0 returns.

    The switch sees only tile-sized operands and results: XLA:CPU copies every buffer
    carried through a conditional with more than two branches, so the big buffers are
    updated outside it.
    """

    def branch(size):
        def run(*operands):
            rows, per_tile = tile_fn(size, *operands)
            return tuple(_pad_rows(r, max_tile) for r in rows), per_tile
        return run

    def nothing(*_):
        # Made inside the branch, the zeros are filled only when it runs; made outside,
        # they were operands of the switch, filled at every loop step (1-core fwd+bwd
        # 1.5% slower at the benchmark shape, and 11 MB more temporary memory).
        return jax.tree.map(lambda z: jnp.zeros(z.shape, z.dtype), zeros)

    branches = [nothing] + [branch(k * align) for k in range(1, max_tile // align)]
    return lax.switch(rest // align, branches, *operands)


def _for_each_expert_block(block_start, block_rows, max_tile, rest_step, tile_step, carry):
    """Cover rows [start, start + rows) of one expert: one tile of the rest (rows mod
    max_tile, whatever its size), then tiles of `max_tile` rows.

    One matmul of the expert's own size beats a sum of power-of-two tiles on CPU: a
    [384, D] matmul runs faster per FLOP than [256, D] + [128, D], and every tile also
    pays a gather, a scatter and a few small ops. The rest tile runs first so that its
    results can seed the carry: the backward's per-expert weight gradients start from
    them instead of from zeros, which saves a fill and an add per expert.
    """
    num_full = block_rows // max_tile
    carry = rest_step(block_start + num_full * max_tile, block_rows - num_full * max_tile, carry)
    return lax.fori_loop(0, num_full, lambda i, c: tile_step(block_start + i * max_tile, c), carry)


def _scan_experts(expert_step, init, block_start, block_rows, gate, up, down, empty_output):
    """lax.scan over the E experts of `expert_step(carry, start, rows, w_gate_up [D, 2F],
    w_down [F, D]) -> (carry, per-expert output)`, outputs stacked along E.

    An expert's weights are sliced out (gate and up concatenated, so that a tile runs one
    wide matmul) only when it has rows: an empty expert, the common case when decoding a
    few tokens, costs a predicate instead of copies of its weights, and outputs
    `empty_output`. (A two-way lax.cond keeps the big carried buffers in place on CPU.)
    """

    def step(carry, e):
        def run(carry):
            w_gate_up = jnp.concatenate([gate[e], up[e]], axis=1)  # [D, 2F]
            return expert_step(carry, block_start[e], block_rows[e], w_gate_up, down[e])

        return lax.cond(block_rows[e] > 0, run, lambda carry: (carry, empty_output), carry)

    return lax.scan(step, init, jnp.arange(gate.shape[0]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def tiled_moe(x, row_weight, row_token, block_start, block_rows, gate, up, down, max_tile, align,
              fp8=False):
    """y[s] = sum over rows r with row_token[r] == s of row_weight[r] * SwiGLU_e(r)(x[s]).

    x: [S, D]; row_weight: [R] (0 on padding rows); row_token: [R] int, S on padding
    rows; block_start, block_rows: [E] int: expert e owns rows [start, start + rows), a
    multiple of `align`; gate, up: [E, D, F]; down: [E, F, D]; max_tile: static, a
    multiple of align -> y: [S, D] float32.

    A `lax.scan` over experts slices one expert's weights per step (a slice, never a
    gather of weights; skipped for an expert without rows). Each tile of that expert's
    rows gathers its tokens from x, runs gate/up, SiLU and down while the tile is in
    cache, and scatter-adds the weighted result into y. Nothing of size [R, D] is materialised; under
    differentiation the pre-activations [R, 2F] are kept for the backward.

    fp8 (static): every GEMM, forward and backward, rounds its activation inputs as
    moe_jax.layers.fp8 does; the caller passes weights already rounded to their blocks.
    """
    y, _ = _tiled_forward(x, row_weight, row_token, block_start, block_rows, gate, up, down,
                          max_tile, align, keep_pre=False, fp8=fp8)
    return y


def _with_slack(row_token, row_weight, num_tokens, max_tile):
    """The last tile of an expert reads max_tile rows whatever its size: pad the row
    arrays so that it never reads past the end (padding rows: token S, weight 0)."""
    return (jnp.pad(row_token, (0, max_tile), constant_values=num_tokens),
            jnp.pad(row_weight, (0, max_tile)))


def _tiled_forward(x, row_weight, row_token, block_start, block_rows, gate, up, down, max_tile, align,
                   keep_pre, fp8):
    """-> (y [S, D] float32, pre-activations [R + max_tile, 2F] if keep_pre else None; in
    `_to_bits` form)."""
    num_tokens, d_model = x.shape
    num_rows, ffn = row_token.shape[0], gate.shape[-1]
    row_token, row_weight = _with_slack(row_token, row_weight, num_tokens, max_tile)
    rest_zeros = ((jax.ShapeDtypeStruct((max_tile, d_model), jnp.float32),)
                  + ((jax.ShapeDtypeStruct((max_tile, 2 * ffn), x.dtype),) if keep_pre else ()), ())

    def tile_forward(token, weight, w_gate_up, w_down):
        out, gu = _tile_forward(x, token, weight, w_gate_up, w_down, fp8)
        return (out, gu) if keep_pre else (out,)

    def expert_step(carry, start, rows, w_gate_up, w_down):
        def tile_rows(row):
            return (lax.dynamic_slice_in_dim(row_token, row, max_tile),
                    lax.dynamic_slice_in_dim(row_weight, row, max_tile))

        def update(carry, row, token, out, gu=None):
            y, pre = carry
            y = _scatter_add_rows(y, token, out)
            return y, (lax.dynamic_update_slice_in_dim(pre, _to_bits(gu), row, 0) if keep_pre else None)

        def tile_step(row, carry):
            token, weight = tile_rows(row)
            return update(carry, row, token, *tile_forward(token, weight, w_gate_up, w_down))

        def rest_step(row, rest, carry):
            token, weight = tile_rows(row)
            rows, () = _rest_tile(
                rest, max_tile, align,
                lambda size, t, w: (tile_forward(t[:size], w[:size], w_gate_up, w_down), ()),
                rest_zeros, token, weight)
            # Rows past `rest` belong to the next expert: drop them from the scatter. Their
            # pre-activations (zeros) are overwritten when the next expert runs.
            token = jnp.where(jnp.arange(max_tile) < rest, token, num_tokens)
            return update(carry, row, token, *rows)

        return _for_each_expert_block(start, rows, max_tile, rest_step, tile_step, carry), None

    pre = _to_bits(jnp.zeros((num_rows + max_tile, 2 * ffn), x.dtype)) if keep_pre else None
    init = (jnp.zeros(x.shape, jnp.float32), pre)
    (y, pre), _ = _scan_experts(expert_step, init, block_start, block_rows, gate, up, down, None)
    return y, pre


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
    num_tokens, d_model = x.shape
    num_rows, ffn = row_token.shape[0], gate.shape[-1]
    acc = jnp.float32  # weight gradients sum over many tiles: accumulate in float32
    # The barrier makes dy a real buffer: when dy is a broadcast (the gradient of sum(y)),
    # XLA would otherwise sink the broadcast into the loop and rebuild [S, D] per expert.
    dy = lax.optimization_barrier(dy.astype(acc))
    row_token, row_weight = _with_slack(row_token, row_weight, num_tokens, max_tile)
    rest_zeros = ((jax.ShapeDtypeStruct((max_tile, d_model), acc), jax.ShapeDtypeStruct((max_tile,), acc)),
                  (jax.ShapeDtypeStruct((d_model, 2 * ffn), acc), jax.ShapeDtypeStruct((ffn, d_model), acc)))

    def expert_step(carry, start, rows, w_gate_up, w_down):
        def tile_rows(row):
            return (lax.dynamic_slice_in_dim(row_token, row, max_tile),
                    lax.dynamic_slice_in_dim(row_weight, row, max_tile),
                    _from_bits(lax.dynamic_slice_in_dim(pre, row, max_tile), x.dtype))

        def update(dx, d_row_weight, row, token, dxt, d_weight):
            return (_scatter_add_rows(dx, token, dxt),
                    lax.dynamic_update_slice_in_dim(d_row_weight, d_weight, row, 0))

        def tile_step(row, carry):
            dx, d_row_weight, d_gate_up, d_down = carry
            token, weight, gu = tile_rows(row)
            dxt, d_weight, d_gate_up_tile, d_down_tile = _tile_backward(
                x, dy, token, weight, gu, w_gate_up, w_down, fp8)
            return (*update(dx, d_row_weight, row, token, dxt, d_weight),
                    d_gate_up + d_gate_up_tile, d_down + d_down_tile)

        def rest_step(row, rest, carry):
            token, weight, gu = tile_rows(row)

            def tile_fn(size, t, w, gu):
                dxt, d_weight, d_gate_up, d_down = _tile_backward(
                    x, dy, t[:size], w[:size], gu[:size], w_gate_up, w_down, fp8)
                return (dxt, d_weight), (d_gate_up, d_down)

            (dxt, d_weight), (d_gate_up, d_down) = _rest_tile(
                rest, max_tile, align, tile_fn, rest_zeros, token, weight, gu)
            token = jnp.where(jnp.arange(max_tile) < rest, token, num_tokens)
            return (*update(*carry, row, token, dxt, d_weight), d_gate_up, d_down)

        dx, d_row_weight, d_gate_up, d_down = _for_each_expert_block(
            start, rows, max_tile, rest_step, tile_step, carry)
        grads = (d_gate_up[:, :ffn].astype(gate.dtype), d_gate_up[:, ffn:].astype(up.dtype),
                 d_down.astype(down.dtype))
        grads = tuple(_to_bits(g) for g in grads)  # stacked by the scan: see _to_bits
        return (dx, d_row_weight), grads

    init = (jnp.zeros(x.shape, acc), jnp.zeros((num_rows + max_tile,), acc))
    no_grads = tuple(_to_bits(jnp.zeros(w.shape[1:], w.dtype)) for w in (gate, up, down))
    (dx, d_row_weight), (d_gate, d_up, d_down) = _scan_experts(
        expert_step, init, block_start, block_rows, gate, up, down, no_grads)
    return (dx.astype(x.dtype), d_row_weight[:num_rows].astype(row_weight.dtype), None, None, None,
            _from_bits(d_gate, gate.dtype), _from_bits(d_up, up.dtype), _from_bits(d_down, down.dtype))


tiled_moe.defvjp(_tiled_fwd, _tiled_bwd)
