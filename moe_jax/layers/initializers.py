"""Parameter initialisers carrying logical axis names for the sharding rules."""

import flax.linen as nn


def dense_init(std: float, axes: tuple[str, ...]):
    """Truncated-normal(std) initialiser annotated with logical axes (one name per dim)."""
    return nn.with_logical_partitioning(nn.initializers.truncated_normal(stddev=std), axes)
