"""Expert parallelism: routed experts split over the `expert` mesh axis. The ONE place
that calls `jax.shard_map`.

Shapes (per device unless said otherwise): S tokens on this device, D model, E experts
in all, P devices on the expert axis, L = E / P experts on each, K experts per token,
C capacity slots per (device, expert), F expert ffn (or this device's slice of it).

Every device routes its own tokens (the router runs outside, under the compiler's
sharding, on batch-split tokens with the gate gathered), then:

1. builds one send buffer per destination device,
2. `all_to_all` over the expert axis (CPU; `ragged_all_to_all` for the dropless
   layout on GPU/TPU, picked at trace time by backend),
3. runs its L local experts on what it received with the configured engine from
   `dispatch.py` (the local grouped matmul),
4. sends the results back (the same exchange, reversed) and combines them.

Two buffer layouts, picked by whether the engine may drop:

- "slots" (`capacity`): each device gives every expert C = ceil(S K / E * factor)
  slots, filled first-choice-first exactly as the one-device `capacity` engine fills its
  slots, so the exchange is [P, L*C, D]. Assignments past C are dropped at the source
  and counted there; the receiver's engine gets exactly P*C rows per expert with a
  capacity factor of 1, so it can never drop more. The capacity is per device (vmoe's
  groups), so when something is dropped it is not always what one device would drop
  with ceil(all tokens * K / E * factor) slots; when nothing is, the outputs are equal.
- "tokens" (`dropless`, `reference`, any other engine, which must not drop): each
  device sends every destination the tokens that chose any of its experts, once per
  token, with up to K' = min(K, L) (local expert, weight) slots; the receiver's engine
  combines them. The buffer holds S rows per destination, the worst case (all local
  tokens choose that device) and a bound that always holds, so nothing is ever dropped;
  unused slots carry weight 0 and an expert the token did not choose (engines may
  assume a token picks an expert at most once). The receiver computes P*S*K' rows
  whatever the routing: the price of static shapes on CPU. With ragged_all_to_all only
  the rows in use cross the network.

The dropped count is summed over every token-splitting axis (global). The expert load
the bias update reads is computed by the router outside this function on the global
(compiler-sharded) routing, so it is global too.

Tensor parallelism composes: expert weights split on F ("expert_mlp") over an axis that
does not split tokens give each device a partial SwiGLU output (SwiGLU is elementwise in
F), summed by one psum at the end. Dimensions split over fsdp are gathered in here
(their gradients come back reduce-scattered).

Mesh axes come from the logical axis rules active in flax (`nn.logical_axis_rules`, set
by `moe_jax.parallel.sharding.use_mesh`), else from `FALLBACK_RULES`.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from moe_jax.moe import dispatch

EXPERT_AXIS = "expert"
# Without an active rules context: tokens split over the batch-like axes present,
# experts over the expert axis, everything else replicated.
FALLBACK_RULES = (("batch", ("data", "fsdp", "expert")), ("expert", "expert"))
# Engines are pluggable pure functions; some build loop carries with jnp.zeros, which the
# shard_map type check (check_vma) rejects as "not varying" next to per-device values.
# Unchecked, JAX treats every value as device-varying, which keeps autodiff correct (the
# tests compare every gradient with the one-device reference) at the price of not
# verifying out_specs, which here are right by construction (y split like the tokens and
# psum'd over F shards; the dropped count psum'd).
CHECK_VMA = False
DROPPING_ENGINES = frozenset({"capacity"})
GATE_UP_AXES = ("expert", "embed", "expert_mlp")  # [E, D, F] as MoEBlock annotates them; down is [E, F, D]


def active_mesh():
    """The mesh set by `jax.set_mesh` (abstract inside jit), or None."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def expert_axis_size(mesh=None) -> int:
    mesh = mesh if mesh is not None else active_mesh()
    if mesh is None or EXPERT_AXIS not in mesh.axis_names:
        return 1
    return dict(zip(mesh.axis_names, mesh.axis_sizes))[EXPERT_AXIS]


def engine_for_active_mesh(name: str, fp8: bool = False):
    """The dispatch engine `name`, wrapped in expert parallelism when the active mesh has
    an expert axis of size > 1. Same signature as every engine in `dispatch.py`.
    fp8: the expert GEMMs in FP8 (moe_jax.layers.fp8)."""
    engine = dispatch.get_engine(name)
    if expert_axis_size() <= 1:
        return functools.partial(engine, fp8=True) if fp8 else engine
    return functools.partial(expert_parallel_moe, engine_name=name, fp8=fp8)


# ----------------------------------------------------------------------------------------
# Specs from the logical rules.
# ----------------------------------------------------------------------------------------


def _mesh_axes(logical_names, rules, sizes) -> list[tuple[str, ...]]:
    """Mesh axes of each dimension of an array with these logical names (flax's rule
    resolution), keeping only axes the mesh has."""
    out = []
    for entry in nn.logical_to_mesh_axes(tuple(logical_names), rules):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        out.append(tuple(n for n in names if n in sizes))
    return out


def _divisible_axes(dim: int, axes, sizes) -> tuple[str, ...]:
    """Drop trailing axes until their product divides `dim` (as parallel.sharding does)."""
    axes = tuple(axes)
    while axes and dim % math.prod(sizes[a] for a in axes):
        axes = axes[:-1]
    return axes


def _spec_entry(axes):
    return None if not axes else axes[0] if len(axes) == 1 else tuple(axes)


class _Layout:
    """Which mesh axes split tokens and each expert-weight dimension."""

    def __init__(self, mesh, rules, num_tokens: int, experts: dispatch.ExpertWeights):
        sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
        self.ep_size = sizes[EXPERT_AXIS]
        (self.token_axes,) = _mesh_axes(("batch",), rules, sizes)
        if EXPERT_AXIS not in self.token_axes:
            raise ValueError(f"expert parallelism needs tokens split over the {EXPERT_AXIS!r} axis; "
                             f"the rules map 'batch' to {self.token_axes}")
        shards = math.prod(sizes[a] for a in self.token_axes)
        if num_tokens % shards:
            raise ValueError(f"expert parallelism: {num_tokens} tokens (batch * length) do not split "
                             f"over {shards} devices ({self.token_axes}); pick a batch size that does")
        num_experts, d_model, ffn = experts.gate.shape
        if num_experts % self.ep_size:
            raise ValueError(f"model.num_experts = {num_experts} does not split over "
                             f"mesh.expert = {self.ep_size} devices")
        expert_axes, embed_axes, ffn_axes = _mesh_axes(GATE_UP_AXES, rules, sizes)
        if expert_axes != (EXPERT_AXIS,):
            raise ValueError(f"expert parallelism needs the expert dim of {GATE_UP_AXES} on "
                             f"{EXPERT_AXIS!r} alone; the rules give {expert_axes}")
        # D must be whole for the token vectors: gather whatever splits it. F may stay
        # split (partial outputs, one psum) unless the same axis also splits tokens.
        self.embed_axes = _divisible_axes(d_model, embed_axes, sizes)
        self.ffn_axes = _divisible_axes(ffn, tuple(a for a in ffn_axes if a not in self.token_axes), sizes)
        self.token_spec = P(_spec_entry(self.token_axes))
        gate_up = P(EXPERT_AXIS, _spec_entry(self.embed_axes), _spec_entry(self.ffn_axes))
        down = P(EXPERT_AXIS, _spec_entry(self.ffn_axes), _spec_entry(self.embed_axes))
        self.weight_specs = dispatch.ExpertWeights(gate_up, gate_up, down)


def _gather_embed(experts: dispatch.ExpertWeights, embed_axes) -> dispatch.ExpertWeights:
    if not embed_axes:
        return experts
    gather = functools.partial(jax.lax.all_gather, axis_name=embed_axes, tiled=True)
    return dispatch.ExpertWeights(gather(experts.gate, axis=1), gather(experts.up, axis=1),
                                  gather(experts.down, axis=2))


# ----------------------------------------------------------------------------------------
# Exchanges.
# ----------------------------------------------------------------------------------------


def _all_to_all(buf):
    """[P, ...] -> [P, ...]: block p goes to device p; block q of the result came from q."""
    return jax.lax.all_to_all(buf, EXPERT_AXIS, 0, 0, tiled=False)


def _ragged_exchange(buf, send_sizes, recv_sizes):
    """Like `_all_to_all` on [P, R, ...] buffers whose block p holds send_sizes[p] rows in
    use (at its start): only those rows travel; the rest of each received block is 0."""
    num_blocks, rows = buf.shape[:2]
    flat = buf.reshape((num_blocks * rows,) + buf.shape[2:])
    me = jax.lax.axis_index(EXPERT_AXIS)
    input_offsets = jnp.arange(num_blocks, dtype=jnp.int32) * rows
    output_offsets = jnp.full((num_blocks,), me * rows, jnp.int32)  # my block on every receiver
    out = jax.lax.ragged_all_to_all(flat, jnp.zeros_like(flat), input_offsets,
                                    send_sizes.astype(jnp.int32), output_offsets,
                                    recv_sizes.astype(jnp.int32), axis_name=EXPERT_AXIS)
    return out.reshape(buf.shape)


def default_exchange() -> str:
    """ragged_all_to_all is UNIMPLEMENTED on CPU."""
    return "dense" if jax.default_backend() == "cpu" else "ragged"


def _slots_moe(x, expert_index, combine_weights, experts, engine, capacity_factor, ep_size):
    """Capacity layout. x: [S, D]; expert_index, combine_weights: [S, K]; experts: the L
    local experts -> (y [S, D] float32, dropped assignments on this device)."""
    num_tokens, d_model = x.shape
    top_k = expert_index.shape[1]
    local = experts.gate.shape[0]
    num_experts = local * ep_size
    cap = dispatch.expert_capacity(num_tokens, top_k, num_experts, capacity_factor)

    # Fill [E, C] slots first-choice-first, as dispatch.capacity does on one device.
    flat_expert = expert_index.T.reshape(-1)  # [N], k-major
    flat_token = jnp.tile(jnp.arange(num_tokens, dtype=jnp.int32), top_k)  # [N]
    flat_weight = combine_weights.T.reshape(-1)  # [N]
    rank, _ = dispatch.rank_within_expert(flat_expert, num_experts)
    kept = rank < cap
    slot = jnp.where(kept, flat_expert * cap + rank, num_experts * cap)
    slot_token = jnp.full((num_experts * cap,), num_tokens, jnp.int32).at[slot].set(flat_token, mode="drop")
    x_padded = jnp.concatenate([x, jnp.zeros((1, d_model), x.dtype)], axis=0)
    send = x_padded[slot_token].reshape(ep_size, local * cap, d_model)  # [P, L*C, D]
    send_used = (slot_token < num_tokens).reshape(ep_size, local * cap)

    recv = _all_to_all(send)  # [P, L*C, D]: block q from device q
    recv_used = _all_to_all(send_used)
    rows = recv.reshape(ep_size, local, cap, d_model).transpose(1, 0, 2, 3).reshape(-1, d_model)  # [L*P*C, D]
    row_weight = recv_used.reshape(ep_size, local, cap).transpose(1, 0, 2).reshape(-1, 1)
    row_expert = jnp.repeat(jnp.arange(local, dtype=jnp.int32), ep_size * cap)[:, None]  # [L*P*C, 1]
    # Exactly P*C rows per expert and a factor of 1: the engine's own capacity is P*C.
    out, receiver_dropped = engine(rows, row_expert, row_weight.astype(combine_weights.dtype), experts, 1.0)

    back = out.reshape(local, ep_size, cap, d_model).transpose(1, 0, 2, 3).reshape(ep_size, local * cap, d_model)
    out_slots = _all_to_all(back).reshape(num_experts * cap, d_model)  # [E*C, D]
    gathered = out_slots[jnp.where(kept, slot, 0)].astype(jnp.float32)  # [N, D]
    weight = jnp.where(kept, flat_weight, 0.0).astype(jnp.float32)
    y = (gathered * weight[:, None]).reshape(top_k, num_tokens, d_model).sum(0)  # [S, D]
    return y, jnp.sum(~kept).astype(jnp.int32) + receiver_dropped.astype(jnp.int32)


def _tokens_moe(x, expert_index, combine_weights, experts, engine, capacity_factor, ep_size, exchange):
    """Worst-case token layout (never drops). Shapes as `_slots_moe`."""
    num_tokens, d_model = x.shape
    top_k = expert_index.shape[1]
    local = experts.gate.shape[0]
    num_experts = local * ep_size
    slots = min(top_k, local)  # K': a token picks distinct experts, at most L of them here
    token = jnp.arange(num_tokens)[:, None]

    chosen = jnp.zeros((num_tokens, num_experts), bool).at[token, expert_index].set(True)
    dense_weight = jnp.zeros((num_tokens, num_experts), combine_weights.dtype).at[
        token, expert_index].add(combine_weights)  # [S, E]
    chosen = chosen.reshape(num_tokens, ep_size, local).transpose(1, 0, 2)  # [P, S, L]
    dense_weight = dense_weight.reshape(num_tokens, ep_size, local).transpose(1, 0, 2)
    # Chosen experts first, then unchosen ones as weight-0 fillers: K' distinct experts.
    slot_expert = jnp.argsort(~chosen, axis=-1, stable=True)[..., :slots].astype(jnp.int32)  # [P, S, K']
    slot_weight = jnp.take_along_axis(dense_weight, slot_expert, axis=-1)  # [P, S, K']
    wanted = chosen.any(axis=-1)  # [P, S]: token s sends to device p
    # Per destination, the tokens it wants first (stable), so a ragged exchange sends a prefix.
    order = jnp.argsort(~wanted, axis=-1, stable=True)  # [P, S]
    send_sizes = wanted.sum(axis=-1).astype(jnp.int32)  # [P]
    in_use = jnp.take_along_axis(wanted, order, axis=-1)  # [P, S]
    send_x = jnp.where(in_use[..., None], x[order], 0).astype(x.dtype)  # [P, S, D]
    send_expert = jnp.take_along_axis(slot_expert, order[..., None], axis=1)  # [P, S, K']
    send_weight = jnp.where(in_use[..., None], jnp.take_along_axis(slot_weight, order[..., None], axis=1), 0)

    if exchange == "ragged":
        recv_sizes = _all_to_all(send_sizes)  # [P]
        move = functools.partial(_ragged_exchange, send_sizes=send_sizes, recv_sizes=recv_sizes)
        recv_x, recv_expert, recv_weight = move(send_x), move(send_expert), move(send_weight)
        # Rows past recv_sizes arrive as zeros: restore distinct filler experts there.
        row_in_use = jnp.arange(num_tokens)[None, :] < recv_sizes[:, None]  # [P, S]
        recv_expert = jnp.where(row_in_use[..., None], recv_expert, jnp.arange(slots, dtype=jnp.int32))
        move_back = functools.partial(_ragged_exchange, send_sizes=recv_sizes, recv_sizes=send_sizes)
    elif exchange == "dense":
        recv_x, recv_expert, recv_weight = _all_to_all(send_x), _all_to_all(send_expert), _all_to_all(send_weight)
        move_back = _all_to_all
    else:
        raise ValueError(f"exchange={exchange!r}: expected 'dense' or 'ragged'")

    rows = ep_size * num_tokens
    out, receiver_dropped = engine(recv_x.reshape(rows, d_model), recv_expert.reshape(rows, slots),
                                   recv_weight.reshape(rows, slots), experts, capacity_factor)  # [P*S, D]
    back = move_back(out.reshape(ep_size, num_tokens, d_model))  # [P, S, D], block p from device p
    unsort = jnp.argsort(order, axis=-1)  # [P, S]
    partial = jnp.take_along_axis(back, unsort[..., None], axis=1).astype(jnp.float32)  # [P, S, D]
    y = jnp.sum(jnp.where(wanted[..., None], partial, 0.0), axis=0)  # [S, D]
    return y, receiver_dropped.astype(jnp.int32)


# ----------------------------------------------------------------------------------------
# The engine.
# ----------------------------------------------------------------------------------------


def expert_parallel_moe(x, expert_index, combine_weights, experts: dispatch.ExpertWeights,
                        capacity_factor=1.25, *, engine_name: str, mesh=None, rules=None,
                        exchange: str | None = None, fp8: bool = False):
    """Expert-parallel dispatch (the signature of every engine in `dispatch.py`).

    x: [S, D] global tokens; expert_index, combine_weights: [S, K]; experts: gate and up
    [E, D, F], down [E, F, D] (global) -> (y [S, D] in x.dtype, num_dropped int32 global).
    mesh: default the active one (`jax.set_mesh`); rules: default flax's active logical
    axis rules, else FALLBACK_RULES; exchange: "dense" (all_to_all) or "ragged"
    (ragged_all_to_all, dropless layout only), default by backend; fp8: the local
    engine's expert GEMMs in FP8.
    """
    mesh = mesh if mesh is not None else active_mesh()
    if mesh is None or expert_axis_size(mesh) <= 1:
        raise ValueError("expert_parallel_moe needs a mesh with an expert axis of size > 1")
    rules = rules if rules is not None else (nn.get_logical_axis_rules() or FALLBACK_RULES)
    layout = _Layout(mesh, rules, x.shape[0], experts)
    engine = dispatch.get_engine(engine_name)
    engine = functools.partial(engine, fp8=True) if fp8 else engine
    slots_layout = engine_name in DROPPING_ENGINES
    exchange = exchange or default_exchange()

    def body(x, expert_index, combine_weights, experts):
        experts = _gather_embed(experts, layout.embed_axes)
        if slots_layout:
            y, dropped = _slots_moe(x, expert_index, combine_weights, experts, engine,
                                    capacity_factor, layout.ep_size)
        else:
            y, dropped = _tokens_moe(x, expert_index, combine_weights, experts, engine,
                                     capacity_factor, layout.ep_size, exchange)
        if layout.ffn_axes:
            y = jax.lax.psum(y, layout.ffn_axes)  # partial SwiGLU outputs over F shards
        return y.astype(x.dtype), jax.lax.psum(dropped, layout.token_axes)

    spec = layout.token_spec
    run = jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec, layout.weight_specs),
                        out_specs=(spec, P()), check_vma=CHECK_VMA)
    return run(x, expert_index, combine_weights, experts)
