"""SwiGLU feed-forward block: down(silu(x @ W_gate) * (x @ W_up))."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax.layers.initializers import dense_init


def swiglu(x, w_gate, w_up, w_down):
    """x: [..., D]; w_gate, w_up: [D, F]; w_down: [F, D]."""
    h = jax.nn.silu(x @ w_gate) * (x @ w_up)  # [..., F]
    return h @ w_down


class MLP(nn.Module):
    """Dense gated MLP, used for the first dense layers and for shared experts."""

    d_model: int
    ffn: int
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        def weight(name, shape, axes):
            w = self.param(name, dense_init(self.init_std, axes), shape, self.param_dtype)
            return w.astype(self.dtype)

        w_gate = weight("gate", (self.d_model, self.ffn), ("embed", "mlp"))
        w_up = weight("up", (self.d_model, self.ffn), ("embed", "mlp"))
        w_down = weight("down", (self.ffn, self.d_model), ("mlp", "embed"))
        return swiglu(x.astype(self.dtype), w_gate, w_up, w_down)
