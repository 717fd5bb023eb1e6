"""Per-device memory of a training state on a mesh, from abstract shapes only.

The parameter shapes come from `jax.eval_shape(model.init)` (nothing allocated), their
shardings from the same logical axis rules training uses (`sharding.param_mesh_specs`),
and the per-device shard shape from `NamedSharding(AbstractMesh, spec).shard_shape`,
so a 256-device plan needs no devices.

Accounting per parameter, with n = the elements of its shard on one device:

    parameters    n * itemsize(model.param_dtype)   (TrainState.params)
    gradients     n * itemsize(model.param_dtype)   (jax.grad gives the params' dtype)
    Adam moments  n * 2 * 4                         (two float32 moments)
    master copy   n * 4, only when param_dtype is not float32: with float32 params
                  (the default here) the params are the master weights
    optimizer state = Adam moments + master copy

Activations, the router biases ([layers, E], replicated) and scalar counters are left
out. Bytes are exact integers; the text output prints GiB (2**30 bytes).
"""

from __future__ import annotations

import math
from typing import Mapping

import flax.linen as nn
import numpy as np
from flax import traverse_util
from jax.sharding import NamedSharding

from moe_jax.models.transformer import Transformer
from moe_jax.parallel.mesh import abstract_mesh
from moe_jax.parallel.sharding import (DEFAULT_RULES, Rules, abstract_boxed_params, logical_param_specs,
                                       logical_to_mesh_spec)

GIB = 2**30
MOMENT_BYTES = 2 * 4
MASTER_BYTES = 4
ROUTED_EXPERT_WEIGHTS = ("wi_gate", "wi_up", "wo")


def memory_plan(model_config, mesh_sizes: Mapping[str, int], num_devices: int | None = None,
                rules: Rules = DEFAULT_RULES) -> dict:
    """-> {"mesh", "devices", "param_count", "param_dtype", "per_device" (bytes),
    "per_device_params", "groups" (per-device params of routed experts / the rest)}."""
    mesh = abstract_mesh(dict(mesh_sizes), num_devices)
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    boxed = abstract_boxed_params(Transformer.from_config(model_config))
    params = nn.unbox(boxed)
    logical = logical_param_specs(boxed)
    flat_params = traverse_util.flatten_dict(params)
    flat_logical = traverse_util.flatten_dict(logical, keep_empty_nodes=True)

    total = per_device = 0
    param_bytes = grad_bytes = 0
    groups = {"routed_experts": 0, "other": 0}
    dtypes = set()
    for path, leaf in flat_params.items():
        spec = logical_to_mesh_spec(flat_logical.get(path), leaf.shape, sizes, rules)
        shard = NamedSharding(mesh, spec).shard_shape(leaf.shape)
        n = math.prod(shard)
        itemsize = np.dtype(leaf.dtype).itemsize
        dtypes.add(np.dtype(leaf.dtype).name)
        total += math.prod(leaf.shape)
        per_device += n
        param_bytes += n * itemsize
        grad_bytes += n * itemsize
        groups["routed_experts" if path[-1] in ROUTED_EXPERT_WEIGHTS else "other"] += n
    master_per_param = 0 if dtypes == {"float32"} else MASTER_BYTES
    moments = per_device * MOMENT_BYTES
    master = per_device * master_per_param
    return {
        "mesh": sizes,
        "devices": math.prod(sizes.values()),
        "param_count": total,
        "param_dtype": "/".join(sorted(dtypes)),
        "per_device_params": per_device,
        "even_split_params": math.ceil(total / math.prod(sizes.values())),
        "groups": groups,
        "per_device": {
            "params": param_bytes,
            "grads": grad_bytes,
            "adam_moments": moments,
            "master_params": master,
            "optimizer": moments + master,
            "total": param_bytes + grad_bytes + moments + master,
        },
    }


def format_plan(plan: dict, title: str = "") -> str:
    mesh = " ".join(f"{k}={v}" for k, v in plan["mesh"].items())
    b = plan["per_device"]
    gib = lambda n: f"{n / GIB:10.2f} GiB"  # noqa: E731
    per_dev, even = plan["per_device_params"], plan["even_split_params"]
    master_note = ("float32 master copy" if b["master_params"] else
                   "no master copy: the float32 params are the master")
    lines = [
        f"{title}mesh {mesh} ({plan['devices']} devices), params {plan['param_dtype']}",
        f"  parameters: {plan['param_count'] / 1e9:.2f}B in all, {per_dev / 1e9:.3f}B per device "
        f"({per_dev / max(even, 1):.2f}x an even split; routed experts "
        f"{plan['groups']['routed_experts'] / 1e9:.3f}B, the rest {plan['groups']['other'] / 1e9:.3f}B)",
        "  per device:",
        f"    parameters       {gib(b['params'])}",
        f"    gradients        {gib(b['grads'])}",
        f"    optimizer state  {gib(b['optimizer'])}  (AdamW: 2 float32 moments {b['adam_moments'] / GIB:.2f} GiB; "
        f"{master_note})",
        f"    total            {gib(b['total'])}",
    ]
    return "\n".join(lines)
