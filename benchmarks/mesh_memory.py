"""Per-device memory of the sharded train step, compiled, beside `moe-jax plan`'s
prediction for the same config and mesh (benchmarks/train_step.py --mesh runs this).

The plan (moe_jax.parallel.memory) counts, per device, the parameters and the optimizer
state (two float32 Adam moments, plus a float32 master copy for low-precision params)
from abstract shapes and the sharding rules. The compiled step's arguments on one device
are that state plus its slice of the batch and the step's rng, as XLA's memory analysis
of the partitioned program reports them; the ratio compares the two state figures.
Gradients and activations live in the step's temporaries, reported beside the plan's
gradient bytes (the plan leaves activations out).
"""

from __future__ import annotations

import jax
import numpy as np

from moe_jax.config import load_config
from moe_jax.models.transformer import Transformer
from moe_jax.parallel.memory import memory_plan
from moe_jax.parallel.mesh import parse_mesh_spec
from moe_jax.train.losses import LossWeights
from moe_jax.train.loop import optimizer_config
from moe_jax.train.optimizer import make_optimizer
from moe_jax.train.placement import Placement
from moe_jax.train.state import create_train_state
from moe_jax.train.step import make_train_step

LIMIT = 0.15  # |plan / compiled - 1| for the state on one device


def mesh_memory(spec: str, mesh: str, overrides=()) -> dict:
    config = load_config(spec, list(overrides))
    config.mesh.update(parse_mesh_spec(mesh))
    placement = Placement.from_config(config)
    placement.check_model(config.model)
    m, seq_len, batch = config.model, config.data.seq_len, config.train.batch_size
    model = Transformer.from_config(m)
    optimizer = make_optimizer(optimizer_config(config))
    init = lambda rng: create_train_state(model, optimizer, rng, seq_len)  # noqa: E731
    abstract, shardings = placement.state_shardings(model, init, seq_len)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    batch_sharding = placement.batch_sharding(2, batch)
    fields = {"inputs": np.int32, "targets": np.int32, "loss_mask": np.float32, "segment_ids": np.int32,
              "positions": np.int32}
    batch_spec = {k: jax.ShapeDtypeStruct((batch, seq_len), d, sharding=batch_sharding) for k, d in fields.items()}
    step = make_train_step(model, optimizer, LossWeights.from_config(m), m.bias_update_rate)
    jitted = placement.jit(step, (shardings, batch_sharding, None), (shardings, None), donate_argnums=0).jitted
    compiled = placement.run(lambda: jitted.lower(state, batch_spec, jax.random.PRNGKey(0)).compile())
    analysis = compiled.memory_analysis()
    rows = batch // placement.batch_shards
    batch_bytes = sum(rows * seq_len * np.dtype(d).itemsize for d in fields.values())
    key_bytes = jax.random.PRNGKey(0).nbytes
    compiled_state = analysis.argument_size_in_bytes - batch_bytes - key_bytes
    plan = memory_plan(m, placement.shape)["per_device"]
    plan_state = plan["params"] + plan["optimizer"]
    ratio = plan_state / compiled_state
    return {
        "config": spec, "mesh": placement.shape, "devices": len(jax.devices()),
        "plan_state_bytes": plan_state, "compiled_state_bytes": int(compiled_state),
        "compiled_argument_bytes": int(analysis.argument_size_in_bytes),
        "batch_bytes_per_device": batch_bytes, "ratio_plan_over_compiled": round(ratio, 4),
        "limit": LIMIT, "within_limit": abs(ratio - 1) <= LIMIT,
        "plan_grad_bytes": plan["grads"], "compiled_temp_bytes": int(analysis.temp_size_in_bytes),
        "compiled_output_bytes": int(analysis.output_size_in_bytes),
    }
