"""Dispatch engines: send each token to its K experts and combine the results.

Pure functions, no modules and no sharding. Every engine has the signature

    engine(x [S, D], expert_index [S, K], combine_weights [S, K], experts: ExpertWeights,
           capacity_factor: float, *, fp8: bool = False) -> (y [S, D], num_dropped: int32 scalar)

where `num_dropped` counts (token, expert) assignments that were not computed and `fp8`
runs the expert GEMMs in FP8 (moe_jax.quant.fp8). Shapes:
S tokens, D model, E experts, F expert ffn, K experts per token, C capacity per expert,
N = S * K assignments.

- `reference`: a Python loop over experts that runs every token through every expert
  and masks the result. Obviously correct, E times the work: the yardstick for tests.
- `capacity`: each expert gets C = ceil(N / E * capacity_factor) slots; assignments past
  an expert's capacity are dropped. Slots are filled by index gather/scatter (no one-hot
  einsum over all tokens), first choices of every token before second choices.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.layers.mlp import swiglu
from moe_jax.moe.dropless import dropless, stable_sort_by_expert
from moe_jax.moe.permutation import combine, permute
from moe_jax.quant.fp8 import expert_matmul


class ExpertWeights(NamedTuple):
    gate: jax.Array  # [E, D, F]
    up: jax.Array  # [E, D, F]
    down: jax.Array  # [E, F, D]


def reference(x, expert_index, combine_weights, experts: ExpertWeights, capacity_factor=None, *,
              fp8: bool = False):
    """Loop over experts; every token through every expert, masked by its routing weight."""
    del capacity_factor
    num_experts = experts.gate.shape[0]
    y = jnp.zeros(x.shape, jnp.float32)
    for e in range(num_experts):
        weight = jnp.sum(jnp.where(expert_index == e, combine_weights, 0.0), axis=-1)  # [S]
        out = swiglu(x, experts.gate[e], experts.up[e], experts.down[e], fp8=fp8)  # [S, D]
        y = y + weight[:, None] * out.astype(jnp.float32)
    return y.astype(x.dtype), jnp.zeros((), jnp.int32)


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    return max(1, math.ceil(num_tokens * top_k / num_experts * capacity_factor))


def rank_within_expert(flat_expert, num_experts: int):
    """For each assignment, how many earlier assignments chose the same expert.

    flat_expert: [N] -> (rank [N] int32, group_sizes [E] int32). Uses a stable sort, so
    the cost is N log N whatever E is.
    """
    n = flat_expert.shape[0]
    order, sorted_expert = stable_sort_by_expert(flat_expert.astype(jnp.int32), num_experts)
    group_sizes = jnp.bincount(flat_expert, length=num_experts).astype(jnp.int32)
    group_starts = jnp.cumsum(group_sizes) - group_sizes
    rank_sorted = jnp.arange(n, dtype=jnp.int32) - group_starts[sorted_expert]
    rank = jnp.zeros((n,), jnp.int32).at[order].set(rank_sorted)
    return rank, group_sizes


def capacity(x, expert_index, combine_weights, experts: ExpertWeights, capacity_factor=1.25, *,
             fp8: bool = False):
    """Capacity-limited dispatch by gather/scatter into [E, C, D] expert buffers."""
    num_tokens, d_model = x.shape
    top_k = expert_index.shape[1]
    num_experts = experts.gate.shape[0]
    cap = expert_capacity(num_tokens, top_k, num_experts, capacity_factor)

    # k-major order: every token's first choice claims a slot before any second choice.
    flat_expert = expert_index.T.reshape(-1)  # [N]
    flat_token = jnp.tile(jnp.arange(num_tokens, dtype=jnp.int32), top_k)  # [N]
    rank, _ = rank_within_expert(flat_expert, num_experts)
    kept = rank < cap
    slot = jnp.where(kept, flat_expert * cap + rank, num_experts * cap)  # dropped -> out of range

    # Which token (and which token-major assignment s K + k) fills each slot; empty slots
    # hold token S and assignment N, and read as zeros.
    slot_token = jnp.full((num_experts * cap,), num_tokens, jnp.int32)
    slot_token = slot_token.at[slot].set(flat_token, mode="drop")
    flat_k = jnp.repeat(jnp.arange(top_k, dtype=jnp.int32), num_tokens)  # [N]
    slot_assignment = jnp.full((num_experts * cap,), num_tokens * top_k, jnp.int32)
    slot_assignment = slot_assignment.at[slot].set(flat_token * top_k + flat_k, mode="drop")
    assignment_slot = slot.reshape(top_k, num_tokens).T  # [S, K], E * C where dropped
    # Gathers whose backwards are gathers too (see permutation.py): XLA's own transposes
    # are scatter-adds into zero-filled [S, D] and [E * C, D] buffers, slow on CPU.
    buffers = permute(x, slot_token, assignment_slot).reshape(num_experts, cap, d_model)  # [E, C, D]

    h = jax.nn.silu(expert_matmul(buffers, experts.gate, fp8=fp8)) * expert_matmul(
        buffers, experts.up, fp8=fp8)  # [E, C, D] @ [E, D, F] -> [E, C, F]
    out = expert_matmul(h, experts.down, fp8=fp8).reshape(num_experts * cap, d_model)  # [E*C, D]

    y = combine(out, combine_weights, assignment_slot, slot_token, slot_assignment)  # [S, D] f32
    num_dropped = jnp.sum(~kept).astype(jnp.int32)
    return y.astype(x.dtype), num_dropped


ENGINES: dict[str, Callable] = {
    "reference": reference,
    "capacity": capacity,
    "dropless": dropless,
}


def get_engine(name: str) -> Callable:
    if name not in ENGINES:
        raise ValueError(f"model.dispatch = {name!r}: expected one of {sorted(ENGINES)}")
    return ENGINES[name]
