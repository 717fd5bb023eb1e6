"""RMSNorm, computed in float32 whatever the activation dtype."""

import flax.linen as nn
import jax.numpy as jnp


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, scale initialised to one."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x):
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jnp.reciprocal(jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps))
        return (normed * scale.astype(jnp.float32)).astype(self.dtype)
