"""Generation rows on the active mesh: split over the batch axes, gathered back whole.

When a mesh is set (`jax.set_mesh`, as moe_jax.parallel.sharding.use_mesh does, or
`generation_mesh` for a stretch of code that samples between training steps), `generate`
and the GRM's meta-RM prefill place their [B, ...] inputs split over the mesh axes the
logical name "batch" maps to (data, fsdp, expert), so the sampler runs
sharded beside parameters that stay where they are (the MoE block then runs expert-
parallel over `expert`), and every process gets every row back. Rows are padded to a
multiple of the batch shards with copies of the first row, which are dropped again: the
dispatch never drops a token, so rows do not affect each other. Without a mesh (or on
one device) these are no-ops.

Every process must pass the same rows: placement is collective on several processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp", "expert")  # without flax rules in effect
_GENERATION = contextvars.ContextVar("moe_jax_generation_mesh", default=None)  # (mesh, rules)


@contextlib.contextmanager
def generation_mesh(mesh, rules):
    """Sample on `mesh` (with these logical axis rules) inside the block, without making
    the mesh current for everything else (building states, say, which runs outside it)."""
    token = _GENERATION.set((mesh, rules))
    try:
        yield
    finally:
        _GENERATION.reset(token)


@contextlib.contextmanager
def sampling_context():
    """What a sampling call runs under: the generation mesh and its rules, when one is set
    and jax has no mesh of its own current; else nothing."""
    pending = _GENERATION.get()
    if pending is None or _jax_mesh() is not None:
        yield
        return
    mesh, rules = pending
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _jax_mesh():
    get = getattr(jax.sharding, "get_mesh", None)
    mesh = get() if get is not None else None
    return None if mesh is None or mesh.empty else mesh


def active_mesh():
    """The concrete mesh sampling runs on: jax's current one, else the generation mesh."""
    mesh = _jax_mesh()
    if mesh is None and _GENERATION.get() is not None:
        mesh = _GENERATION.get()[0]
    return mesh


def batch_axes(mesh) -> tuple[str, ...]:
    """The mesh axes that split a batch: the flax rules' mapping of "batch" if rules are
    in effect, else the batch-like axes the mesh has."""
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    # The abstract mesh: unlike the concrete one it can be read inside a trace as well.
    if jax.sharding.get_abstract_mesh().empty and _GENERATION.get() is not None:
        with nn.logical_axis_rules(_GENERATION.get()[1]):
            entry = nn.logical_to_mesh_axes(("batch",))[0]
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    elif nn.get_logical_axis_rules():
        entry = nn.logical_to_mesh_axes(("batch",))[0]
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    else:
        axes = BATCH_AXES
    return tuple(a for a in axes if a in sizes and sizes[a] > 1)


def _split(mesh) -> tuple[tuple[str, ...], int]:
    """(the axes that split rows on `mesh`, how many ways they split them); ((), 1) for None."""
    if mesh is None:
        return (), 1
    axes = batch_axes(mesh)
    return axes, math.prod(dict(zip(mesh.axis_names, mesh.axis_sizes))[a] for a in axes)


def row_shards() -> int:
    """How many ways the active mesh splits rows (1 without one): a row count that is a
    multiple of it splits evenly, as a fixed set of decode slots must."""
    return _split(active_mesh())[1]


def constrain_rows(x, axis: int = 0):
    """Inside a trace under the sampling mesh: keep dimension `axis` of `x` split over the
    batch axes (a state carried from call to call, such as decode slots, then stays where
    it is instead of wherever the compiler's propagation would leave it). A no-op without
    a mesh or when the axes do not divide the dimension."""
    mesh = jax.sharding.get_abstract_mesh()
    axes, shards = _split(None if mesh.empty else mesh)
    if shards == 1 or x.shape[axis] % shards:
        return x
    return jax.lax.with_sharding_constraint(x, P(*(None,) * axis, axes))


def place_rows(*arrays):
    """-> (rows, placed arrays): host [B, ...] arrays padded to a multiple of the batch
    shards and split over the batch axes of the active mesh; unchanged without one."""
    rows = int(np.shape(arrays[0])[0])
    mesh = active_mesh()
    axes, shards = _split(mesh)
    if not axes:
        return rows, arrays
    padded = -(-rows // shards) * shards
    sharding = NamedSharding(mesh, P(axes))
    placed = []
    for array in arrays:
        array = np.asarray(array)
        if padded != rows:
            array = np.concatenate([array, np.repeat(array[:1], padded - rows, axis=0)])
        placed.append(jax.make_array_from_callback(array.shape, sharding, lambda index, a=array: a[index]))
    return rows, tuple(placed)


def gather_rows(tree, rows: int | None):
    """Outputs of a sharded call -> host numpy arrays of the first `rows` rows (None: all),
    on every process (replicated first where a process does not hold them all)."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = jax.jit(lambda v: v, out_shardings=NamedSharding(x.sharding.mesh, P()))(x)
        return np.asarray(x)[:rows]

    return jax.tree.map(get, tree)
