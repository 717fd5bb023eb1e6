"""Dropless dispatch: sort the (token, expert) assignments by expert, run every expert on
exactly its rows with a grouped matmul, and combine. No assignment is ever dropped.

Shapes: S tokens, D model, E experts, F expert ffn, K experts per token, N = S * K
assignments, R rows of the expert-sorted buffer (N plus padding), T rows per tile.

1. `sort_by_expert` (integers only, no gradient): the row of every assignment in the
   expert-sorted buffer. For the CPU path every expert's block is padded to a multiple
   of `align` rows, so a tile never spans two experts.
2. The grouped SwiGLU, picked at trace time by backend (`ragged_kernels`):
   - GPU/TPU, "tokamax" (its Pallas kernels, when installed) or "ragged_dot": `permute`
     x into the sorted buffer [N, D], run `grouped_matmul.ragged_swiglu`, `combine`
     back; both permutations have gather-only backwards (permutation.py).
   - CPU, "tiled": `grouped_matmul.tiled_moe`, which fuses the gather, the expert MLP
     and the weighted combine into one loop over expert tiles, with a hand-written
     backward of the same shape (ragged_dot on CPU is a masked dense product doing E
     times the work). Figures against a dense SwiGLU of the same active FLOPs, per
     core count: benchmarks/RESULTS.md.
   - CPU, "threaded": `threaded.threaded_moe`, the same expert MLP on host threads,
     one range of experts per core (XLA:CPU does not spread a loop's small products
     over its threads). Picked for big layers on one device; see `default_implementation`.
   `implementation=` forces one; the tests use it to check that each equals `reference`.

Like every engine, this assumes a token picks each expert at most once (the routers'
top-k guarantees it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.moe import grouped_matmul, ragged_kernels, threaded
from moe_jax.moe.permutation import combine, permute
from moe_jax.layers.fp8 import quantize_weight_ste

# Bounds of the CPU tiling (see `cpu_tiling`). Measured in benchmarks/RESULTS.md.
MAX_TILE_LIMIT = 512  # bigger tiles gain nothing on CPU and make the switch longer
MAX_TILE_SIZES = 16  # each tile size is one more switch branch: ~0.4 s of compile each


class SortedLayout(NamedTuple):
    """Where the N assignments live in the expert-sorted buffer of R rows."""

    assignment_row: jax.Array  # [S, K] int32: buffer row of assignment (s, k)
    row_token: jax.Array  # [R] int32: token of each row; S on padding rows
    row_assignment: jax.Array  # [R] int32: flat assignment s * K + k of each row; N on padding
    group_sizes: jax.Array  # [E] int32: assignments per expert
    block_start: jax.Array  # [E] int32: first row of each expert's block
    block_rows: jax.Array  # [E] int32: rows in each expert's block (group size + padding)


def cpu_tiling(num_assignments: int, num_experts: int) -> tuple[int, int]:
    """(max_tile, align) for the CPU kernel, from the static mean rows per expert N / E.

    Every expert's block is padded to a multiple of `align` rows and runs as one tile of
    its own size if it has at most `max_tile` rows. max_tile ~ 1.25 N / E lets most
    experts run as one matmul under the usual load spread; align is the smallest power
    of two (at least 8) that keeps the tile sizes align, 2 align, ..., max_tile to at
    most MAX_TILE_SIZES. Benchmark shape (N / E = 384): (480, 32). Decoding a few tokens
    (N / E < 1): (8, 8), tiles of 8 rows and no switch at all.
    """
    target = max(1.25 * num_assignments / num_experts, 1.0)
    align = 8
    while align < 64 and target > align * MAX_TILE_SIZES:
        align *= 2
    max_tile = min(MAX_TILE_LIMIT, -(-int(target) // align) * align)
    return max(max_tile, align), align


def num_buffer_rows(num_assignments: int, num_experts: int, align: int) -> int:
    """Static R: enough rows for any routing. Padding each of the E blocks up to a multiple
    of `align` adds at most align - 1 rows per expert."""
    return (num_assignments + num_experts * (align - 1)) // align * align


def stable_sort_by_expert(flat_expert, num_experts: int):
    """flat_expert: [N] int32 -> (order [N], sorted_expert [N]): the assignments sorted by
    expert, ties kept in index order, and their experts.

    One sort of unique packed keys expert * N + n: on CPU ~4x faster than a stable
    argsort, and ~7x faster than ranking by a cumulative sum over an [N, E] one-hot.
    """
    n = flat_expert.shape[0]
    if num_experts * n < 2**31:
        keys = jnp.sort(flat_expert * n + jnp.arange(n, dtype=jnp.int32))  # [N]
        return keys % n, keys // n
    order = jnp.argsort(flat_expert, stable=True).astype(jnp.int32)  # packed keys overflow int32
    return order, flat_expert[order]


def sort_by_expert(expert_index, num_experts: int, align: int = 1) -> SortedLayout:
    """expert_index: [S, K] -> SortedLayout of a buffer whose expert blocks are padded to
    multiples of `align` rows (align=1: no padding, R = N).

    An entry equal to `num_experts` marks an assignment that gets no row (the capacity
    engine's dropped assignments): its assignment_row is R, and it reads as zeros.
    """
    num_tokens, top_k = expert_index.shape
    n = num_tokens * top_k
    num_rows = num_buffer_rows(n, num_experts, align)
    flat_expert = expert_index.reshape(n).astype(jnp.int32)  # [N], n = s K + k

    # num_experts + 1 groups: the unrouted marker sorts after every expert.
    order, sorted_expert = stable_sort_by_expert(flat_expert, num_experts + 1)  # [N], [N]
    group_sizes = jnp.bincount(flat_expert, length=num_experts).astype(jnp.int32)  # [E]
    group_start = jnp.cumsum(group_sizes) - group_sizes  # [E]
    block_rows = (group_sizes + align - 1) // align * align  # [E]
    block_start = jnp.cumsum(block_rows) - block_rows  # [E]

    # The i-th assignment in sorted order is number i - group_start of its expert.
    # Unrouted ones get distinct rows past the end, which the scatters below drop.
    routed = sorted_expert < num_experts
    expert = jnp.minimum(sorted_expert, num_experts - 1)
    position = jnp.arange(n, dtype=jnp.int32)
    row_of_sorted = jnp.where(routed, block_start[expert] + position - group_start[expert],
                              num_rows + position)
    flat_row = jnp.zeros((n,), jnp.int32).at[order].set(row_of_sorted, unique_indices=True)  # [N]
    row_assignment = jnp.full((num_rows,), n, jnp.int32).at[row_of_sorted].set(
        order, mode="drop", unique_indices=True)  # [R]
    row_token = jnp.where(row_assignment < n, row_assignment // top_k, num_tokens)  # [R]
    return SortedLayout(
        assignment_row=jnp.minimum(flat_row, num_rows).reshape(num_tokens, top_k),
        row_token=row_token,
        row_assignment=row_assignment,
        group_sizes=group_sizes,
        block_start=block_start.astype(jnp.int32),
        block_rows=block_rows.astype(jnp.int32),
    )


def row_weights(combine_weights, layout: SortedLayout):
    """combine_weights: [S, K] -> [R], the weight of each row's assignment, 0 on padding."""
    return combine_weights.reshape(-1).at[layout.row_assignment].get(mode="fill", fill_value=0)


# ----------------------------------------------------------------------------------------
# The engine.
# ----------------------------------------------------------------------------------------


def default_implementation(num_assignments: int | None = None, d_model: int | None = None,
                           ffn: int | None = None, fp8: bool = False) -> str:
    """The backend's kernel (`ragged_kernels`); on CPU "threaded" instead of "tiled" when
    the layer is big enough to gain from it (shapes given), it can run here (one device,
    or per device in `jax.shard_map`), the trace need not be portable, and not fp8."""
    implementation = ragged_kernels.default_implementation()
    if (implementation == "tiled" and not fp8 and num_assignments is not None
            and not ragged_kernels.is_portable() and threaded.available()
            and threaded.worth_it(num_assignments, d_model, ffn) and threaded.runs_per_device()):
        return "threaded"
    return implementation


def dropless(x, expert_index, combine_weights, experts, capacity_factor=None, *,
             implementation: str | None = None, max_tile: int | None = None,
             align: int | None = None, fp8: bool = False):
    """Dropless dispatch engine (the signature of every engine in `dispatch.py`).

    x: [S, D]; expert_index: [S, K] int; combine_weights: [S, K]; experts: ExpertWeights,
    gate and up [E, D, F], down [E, F, D] -> (y [S, D] in x.dtype, num_dropped = 0).
    `capacity_factor` is ignored: every expert takes all its tokens.
    implementation: "tiled" or "threaded" (CPU), "tokamax" or "ragged_dot" (GPU/TPU;
    `ragged_kernels`), or None for `default_implementation`.
    max_tile, align: CPU tiling, max_tile a multiple of align; None: `cpu_tiling`.
    fp8: the expert GEMMs in FP8 (moe_jax.layers.fp8).
    """
    del capacity_factor
    num_experts, d_model, ffn = experts.gate.shape
    implementation = ragged_kernels.check_implementation(
        implementation or default_implementation(expert_index.size, d_model, ffn, fp8))
    if implementation == "threaded":
        if fp8:
            raise ValueError("implementation='threaded' has no fp8 GEMMs; use 'tiled' with fp8=True")
        layout = sort_by_expert(expert_index, num_experts)
        y = threaded.threaded_moe(x, row_weights(combine_weights, layout), layout.row_token,
                                  layout.group_sizes, layout.assignment_row, *experts)
    elif implementation != "tiled":
        layout = sort_by_expert(expert_index, num_experts)
        xs = permute(x, layout.row_token, layout.assignment_row)  # [N, D]
        out = grouped_matmul.ragged_swiglu(xs, layout.group_sizes, experts.gate, experts.up, experts.down,
                                           fp8=fp8, implementation=implementation)
        y = combine(out, combine_weights, layout.assignment_row, layout.row_token, layout.row_assignment)
    else:
        default_max_tile, default_align = cpu_tiling(expert_index.size, num_experts)
        max_tile = max_tile or default_max_tile
        align = align or default_align
        if max_tile % align:
            raise ValueError(f"max_tile={max_tile} must be a multiple of align={align}")
        layout = sort_by_expert(expert_index, num_experts, align=align)
        weights = experts
        if fp8:  # rounded once here, per expert; the kernel rounds the activations
            weights = type(experts)(*(quantize_weight_ste(w) for w in experts))
        y = grouped_matmul.tiled_moe(
            x, row_weights(combine_weights, layout), layout.row_token, layout.block_start,
            layout.block_rows, weights.gate, weights.up, weights.down, max_tile, align, fp8)
    return y.astype(x.dtype), jnp.zeros((), jnp.int32)
