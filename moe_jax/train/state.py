"""TrainState: everything a step reads and writes, as one pytree."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from moe_jax.moe.router import BIAS_COLLECTION


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: Any  # float32 master weights (the compute dtype is a model setting)
    opt_state: Any
    router_bias: Any  # non-trainable balancing biases, updated by a rule, not by gradient


def init_variables(model, rng, seq_len: int, batch_size: int = 1):
    """Initialise model variables; returns (params, router_bias, logical partition specs)."""
    tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
    boxed = model.init(rng, tokens)
    specs = nn.get_partition_spec(boxed)
    variables = nn.unbox(boxed)
    return variables["params"], variables.get(BIAS_COLLECTION, {}), specs


def create_train_state(model, optimizer: optax.GradientTransformation, rng, seq_len: int) -> TrainState:
    params, router_bias, _ = init_variables(model, rng, seq_len)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), router_bias=router_bias)
