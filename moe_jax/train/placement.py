"""Where a job's arrays live: the mesh of `config.mesh`, and everything placed on it.

Every job builds one `Placement` and goes through it for its state (created directly in
its shardings, or placed there from host weights), its batches (split over the batch
axes: data, fsdp, expert), its jitted steps (traced under the mesh and the logical
rules, so the MoE block runs expert-parallel when expert > 1) and its generation (the
KV-cached sampler, sharded the same way, never gathering the model onto one device).

One device is the degenerate case: a 1x1x1x1 mesh, the same code, the same numbers.
On several processes every call here is collective: every process makes it, with the
same arguments.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from moe_jax.infer.rows import gather_rows, generation_mesh
from moe_jax.models.config import ConfigError
from moe_jax.models.transformer import Transformer
from moe_jax.parallel import sharding as sh
from moe_jax.parallel.mesh import make_mesh, mesh_config_of

ONE_DEVICE = {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}


def replicate_to_host(tree):
    """Global arrays -> host numpy arrays on every process (gathered where needed)."""
    return gather_rows(tree, None)


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


@dataclasses.dataclass(frozen=True)
class Placement:
    mesh: jax.sharding.Mesh
    rules: sh.Rules = sh.DEFAULT_RULES

    @classmethod
    def from_config(cls, config) -> "Placement":
        """The mesh of `config.mesh` (default: every visible device on fsdp)."""
        return cls(make_mesh(mesh_config_of(config)))

    @classmethod
    def one_device(cls) -> "Placement":
        """The first device alone: a library call given no placement runs as it always did."""
        return cls(make_mesh(ONE_DEVICE))

    @property
    def shape(self) -> dict[str, int]:
        return sh.mesh_axis_sizes(self.mesh)

    @property
    def batch_shards(self) -> int:
        """How many ways the batch axes split a batch: global batches must be a multiple."""
        spec = sh.batch_spec(1, self.shape, self.rules, batch_size=math.prod(self.shape.values()))
        axes = spec[0] if len(spec) else ()
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        return math.prod(self.shape[a] for a in axes)

    def check_model(self, model_config) -> None:
        """The routed experts must split over the expert axis: a ConfigError naming the
        field before anything is built, rather than a shape error inside a trace."""
        experts = self.shape.get("expert", 1)
        if model_config.num_experts % experts:
            raise ConfigError("model.num_experts", model_config.num_experts,
                              f"a multiple of mesh.expert = {experts}")

    def describe(self) -> str:
        shape = " x ".join(f"{k}={v}" for k, v in self.shape.items())
        kinds = sorted({d.platform for d in self.mesh.devices.flat})
        return (f"mesh {shape} over {self.mesh.devices.size} {'/'.join(kinds)} device(s), "
                f"{jax.process_count()} process(es)")

    # -- state ---------------------------------------------------------------------------

    def state_shardings(self, model: Transformer, init_state, seq_len: int = 8):
        """-> (abstract state, NamedShardings) of `init_state(rng)`; nothing allocated."""
        return sh.state_shardings(model, init_state, self.mesh, seq_len, self.rules)

    def create_state(self, model: Transformer, init_state, rng, seq_len: int = 8):
        """`init_state(rng)` straight into its shardings -> (state, shardings)."""
        return sh.create_sharded_state(model, init_state, rng, self.mesh, seq_len, self.rules)

    def put(self, tree, shardings):
        """Host values (the same on every process) -> global arrays on `shardings`."""
        return sh.put_global(jax.tree.map(np.asarray, tree), shardings)

    def param_shardings(self, model: Transformer, params, seq_len: int = 8):
        """NamedShardings for a params-shaped tree (params, router biases replicated)."""
        specs = sh.state_specs(params, sh.abstract_boxed_params(model, seq_len), self.shape, self.rules)
        return sh.to_shardings(specs, self.mesh)

    def put_params(self, model: Transformer, params, router_bias):
        """Host weights -> (params on the param shardings, router biases replicated)."""
        params = self.put(params, self.param_shardings(model, params))
        replicated = NamedSharding(self.mesh, P())
        return params, self.put(router_bias, jax.tree.map(lambda _: replicated, router_bias))

    def bytes_per_device(self, tree) -> int:
        """Bytes of `tree` held by this process's first device in the mesh."""
        device = next(d for d in self.mesh.devices.flat if d.process_index == jax.process_index())
        total = 0
        for x in jax.tree.leaves(tree):
            for shard in x.addressable_shards:
                if shard.device == device:
                    total += shard.data.nbytes
        return total

    def describe_params(self, params) -> str:
        """describe() and where the parameters live: their bytes in all and per device."""
        total = sum(x.nbytes for x in jax.tree.leaves(params))
        return (f"{self.describe()}; parameters {_size(total)}, "
                f"{_size(self.bytes_per_device(params))} per device")

    # -- batches and steps ---------------------------------------------------------------

    def shard_batch(self, batch, *, process_local: bool):
        """Host batch -> global arrays split over the batch axes. process_local: each
        process holds its own rows (a per-process input pipeline) rather than all."""
        return sh.shard_batch(batch, self.mesh, self.rules, process_local=process_local)

    def jit(self, fn, in_shardings, out_shardings, donate_argnums=()):
        """jax.jit traced and run under the mesh and rules (see sharding.jit_sharded)."""
        return sh.jit_sharded(fn, self.mesh, in_shardings, out_shardings, self.rules, donate_argnums)

    def batch_shardings(self, batch):
        return sh.batch_shardings(batch, self.mesh, self.rules)

    def batch_sharding(self, ndim: int, rows: int):
        """The sharding of every [rows, ...] field of a batch (a jit in_shardings prefix)."""
        return NamedSharding(self.mesh, sh.batch_spec(ndim, self.shape, self.rules, rows))

    def replicated(self):
        return NamedSharding(self.mesh, P())

    def generation(self):
        """A context in which sampling (generate, the meta RM's prefill) runs on this mesh,
        its rows split over the batch axes (moe_jax.infer.rows), while everything else
        (state building, jitted steps with their own shardings) runs as it would."""
        return generation_mesh(self.mesh, self.rules)

    def run(self, fn, *args, **kwargs):
        """Call `fn` (which may jit) with the mesh and rules current."""
        with sh.use_mesh(self.mesh, self.rules):
            return fn(*args, **kwargs)

    # -- generation ----------------------------------------------------------------------

    def generate(self, generate_fn, *args, **kwargs) -> dict:
        """`generate_fn` (moe_jax.infer.generate.generate) under the mesh: its rows split
        over the batch axes, the experts over `expert`, the params where they are; every
        process passes the same prompts and gets every row back (moe_jax.infer.rows)."""
        return self.run(generate_fn, *args, **kwargs)
