"""Logical axis rules and the shardings derived from them.

Modules name their dimensions logically (`nn.with_logical_partitioning`, e.g. routed
expert weights ("expert", "embed", "expert_mlp")); `DEFAULT_RULES` maps each name to
mesh axes. Everything here derives from those rules: parameter and optimizer-state
shardings, batch shardings, the memory plan, and (through flax's rules context, which
`use_mesh` sets) the shard_map specs of `moe.expert_parallel`.

For a TrainState (train/ sits above this package, so it is passed in, not imported):

    init = lambda rng: create_train_state(model, optimizer, rng, seq_len)
    state, state_shardings = create_sharded_state(model, init, rng, mesh)
    step = jit_sharded(make_train_step(model, optimizer, weights, rate), mesh,
                       (state_shardings, batch_shardings(batch, mesh), None),
                       (state_shardings, None), donate_argnums=0)
    state, metrics = step(state, shard_batch(batch, mesh), rng)

A dimension that the mapped mesh axes do not divide is split over fewer axes (trailing
ones dropped) rather than failing: e.g. a vocab of 129280 on tensor=3 stays replicated.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Flax applies rules in this order: a rule assigns its mesh axes to a dimension only if
# that dimension is still free and no other dimension of the array holds those axes, and
# a name may have several rules (fallbacks). Order is therefore meaningful.
DEFAULT_RULES: Rules = (
    # Activations: tokens split over every batch-like axis; tensor replicas share tokens.
    ("batch", ("data", "fsdp", "expert")),
    ("length", None),
    # Routed experts claim the expert axis first ...
    ("expert", "expert"),
    # ... so that ZeRO-3 can split every other matrix over fsdp AND expert (the expert
    # axis splits the batch, so for non-expert weights it is one more fsdp axis), while
    # expert weights, whose expert dim already took it, fall back to fsdp alone.
    ("embed", ("fsdp", "expert")),
    ("embed", "fsdp"),
    # MLA's up-projections [rank, heads, kv] have no embed dim: split their rank instead.
    ("q_lora", ("fsdp", "expert")),
    ("q_lora", "fsdp"),
    ("kv_lora", ("fsdp", "expert")),
    ("kv_lora", "fsdp"),
    # Tensor parallelism on the inner dimensions.
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("expert_mlp", "tensor"),
    ("kv", None),
    ("norm", None),
    ("layers", None),
    ("mtp_concat", None),
)

# Logical specs that override the annotation for parameters whose path ends like this.
# The router's gate is [D, E] ("embed", "expert"): splitting its E over the expert axis
# would make every device's top-k a cross-device operation. Each device routes its own
# tokens over all experts instead, with the gate gathered over fsdp like any weight.
PATH_OVERRIDES = {("router", "gate"): ("embed", None)}


def mesh_axis_sizes(mesh) -> dict[str, int]:
    """{axis name: size} of a Mesh or AbstractMesh."""
    return dict(zip(mesh.axis_names, mesh.axis_sizes))


def logical_to_mesh_spec(logical: Sequence[str | None] | None, shape: Sequence[int],
                         axis_sizes: Mapping[str, int], rules: Rules = DEFAULT_RULES) -> P:
    """One array's logical names -> a mesh PartitionSpec that divides its shape.

    Mesh axes missing from `axis_sizes` are ignored; if the product of a dimension's axes
    does not divide it, trailing axes are dropped until it does.
    """
    if logical is None or len(logical) == 0:
        return P()
    mapped = nn.logical_to_mesh_axes(tuple(logical), rules)
    entries = []
    for dim, entry in zip(shape, tuple(mapped) + (None,) * (len(shape) - len(mapped))):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        names = tuple(n for n in names if n in axis_sizes)
        while names and dim % math.prod(axis_sizes[n] for n in names):
            names = names[:-1]
        entries.append(None if not names else names[0] if len(names) == 1 else names)
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def _path_keys(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def logical_param_specs(boxed_params):
    """Boxed (LogicallyPartitioned) params -> tree of logical-name tuples (None leaves for
    unannotated arrays), with PATH_OVERRIDES applied."""
    specs = nn.get_partition_spec(boxed_params)
    unboxed = nn.unbox(boxed_params)

    def pick(path, leaf, spec):
        keys = _path_keys(path)
        for suffix, override in PATH_OVERRIDES.items():
            if keys[-len(suffix):] == suffix:
                # A scanned stack adds leading "layers" dims; keep them.
                return (None,) * (leaf.ndim - len(override)) + tuple(override)
        return None if spec is None else tuple(spec)

    return jax.tree_util.tree_map_with_path(
        pick, unboxed, jax.tree.map(lambda s: s, specs, is_leaf=lambda x: isinstance(x, P) or x is None),
        is_leaf=lambda x: x is None)


def param_mesh_specs(boxed_params, axis_sizes: Mapping[str, int], rules: Rules = DEFAULT_RULES):
    """Boxed params -> tree (same structure as the unboxed params) of mesh PartitionSpecs."""
    logical = logical_param_specs(boxed_params)
    return jax.tree.map(lambda leaf, spec: logical_to_mesh_spec(spec, leaf.shape, axis_sizes, rules),
                        nn.unbox(boxed_params), logical, is_leaf=lambda x: x is None)


def abstract_boxed_params(model, seq_len: int = 8):
    """The model's params as ShapeDtypeStructs in their logical-partitioning boxes."""
    tokens = jax.ShapeDtypeStruct((1, seq_len), np.int32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]


def state_specs(abstract_state, boxed_params, axis_sizes: Mapping[str, int], rules: Rules = DEFAULT_RULES):
    """Specs for any state pytree holding the params and things shaped like them.

    A leaf whose path ends with a parameter's path and has that parameter's shape takes
    its spec: TrainState.params, and the optimizer's mu and nu, which mirror the params
    tree. Everything else (step counters, the [layers, E] router biases) is replicated.
    """
    params = nn.unbox(boxed_params)
    param_specs = param_mesh_specs(boxed_params, axis_sizes, rules)
    by_path = {
        _path_keys(path): (tuple(leaf.shape), spec)
        for (path, leaf), spec in zip(jax.tree_util.tree_leaves_with_path(params),
                                      jax.tree.leaves(param_specs, is_leaf=lambda x: isinstance(x, P)))
    }

    def spec_of(path, leaf):
        keys = _path_keys(path)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and hit[0] == tuple(np.shape(leaf)):
                return hit[1]
        return P()

    return jax.tree_util.tree_map_with_path(spec_of, abstract_state)


def to_shardings(specs, mesh):
    """Tree of PartitionSpecs -> tree of NamedShardings on `mesh`."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def state_shardings(model, init_state: Callable, mesh, seq_len: int = 8, rules: Rules = DEFAULT_RULES):
    """-> (abstract state, NamedShardings) for the state `init_state(rng)` builds, e.g.
    `lambda rng: create_train_state(model, optimizer, rng, seq_len)`. Nothing allocated."""
    abstract = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    specs = state_specs(abstract, abstract_boxed_params(model, seq_len), mesh_axis_sizes(mesh), rules)
    return abstract, to_shardings(specs, mesh)


def create_sharded_state(model, init_state: Callable, rng, mesh, seq_len: int = 8,
                         rules: Rules = DEFAULT_RULES):
    """Run `init_state(rng)` straight into its shardings (no full copy on one device);
    -> (state, shardings). Works on several processes (each fills its own shards).

    Random initialisers give the same numbers whatever the sharding (jax's partitionable
    threefry), so a sharded run starts from exactly the weights of a one-device run.
    Outside `use_mesh` on purpose: the init's forward pass feeds no output, so XLA drops it.
    """
    _, shardings = state_shardings(model, init_state, mesh, seq_len, rules)
    return jax.jit(init_state, out_shardings=shardings)(rng), shardings


def shard_state(state, shardings):
    """Place an existing (one-device or differently sharded) state on `shardings`.
    On several processes use `put_global` with host copies instead."""
    return jax.device_put(state, shardings)


def put_global(tree, shardings):
    """Host values that every process holds in full -> global jax.Arrays on `shardings`
    (each process fills only the shards of its own devices; works on one process too)."""

    def place(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, tree, shardings)


def batch_spec(ndim: int, axis_sizes: Mapping[str, int], rules: Rules = DEFAULT_RULES,
               batch_size: int | None = None) -> P:
    """Spec of a [B, T, ...] batch field: B over the "batch" axes, the rest replicated."""
    shape = (batch_size if batch_size is not None else math.prod(axis_sizes.values()),) + (1,) * (ndim - 1)
    return logical_to_mesh_spec(("batch", "length")[:ndim], shape, axis_sizes, rules)


def batch_shardings(batch, mesh, rules: Rules = DEFAULT_RULES):
    sizes = mesh_axis_sizes(mesh)
    return jax.tree.map(lambda x: NamedSharding(mesh, batch_spec(np.ndim(x), sizes, rules, np.shape(x)[0])),
                        batch)


def shard_batch(batch, mesh, rules: Rules = DEFAULT_RULES, *, process_local: bool = False):
    """Host arrays -> global jax.Arrays split over the batch axes.

    process_local=False: every process holds the whole global batch (tests, synthetic
    data) and contributes the rows its devices own. True: each process holds only its own
    rows, in process order (a per-host input pipeline).
    """
    if not process_local:
        return put_global(batch, batch_shardings(batch, mesh, rules))
    sizes = mesh_axis_sizes(mesh)

    def place_local(x):
        x = np.asarray(x)
        global_rows = x.shape[0] * jax.process_count()
        sharding = NamedSharding(mesh, batch_spec(x.ndim, sizes, rules, global_rows))
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(place_local, batch)


@contextlib.contextmanager
def use_mesh(mesh, rules: Rules = DEFAULT_RULES):
    """Make `mesh` and `rules` current: `jax.set_mesh` (the MoE block then switches to
    expert parallelism when the mesh has expert > 1) and flax's logical axis rules (which
    `moe.expert_parallel` reads for its shard_map specs). Trace jitted steps inside it."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield mesh


def jit_sharded(fn, mesh, in_shardings, out_shardings, rules: Rules = DEFAULT_RULES,
                donate_argnums=()):
    """jax.jit with explicit shardings, traced and run under `use_mesh(mesh, rules)`.

    E.g. a train step: `jit_sharded(make_train_step(model, opt, weights, rate), mesh,
    (state_shardings, batch_shardings, None), (state_shardings, None), donate_argnums=0)`.
    """
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                     donate_argnums=donate_argnums)

    def call(*args):
        with use_mesh(mesh, rules):
            return jitted(*args)

    call.jitted = jitted
    return call
