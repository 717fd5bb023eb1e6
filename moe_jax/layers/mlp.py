"""SwiGLU feed-forward block: down(silu(x @ W_gate) * (x @ W_up))."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax.layers.initializers import dense_init
from moe_jax.layers.fp8 import matmul


def swiglu(x, w_gate, w_up, w_down, *, fp8: bool = False):
    """x: [..., D]; w_gate, w_up: [D, F]; w_down: [F, D]. fp8: the three GEMMs in FP8
    (moe_jax.layers.fp8); the SiLU and product stay in x.dtype."""
    h = jax.nn.silu(matmul(x, w_gate, fp8=fp8)) * matmul(x, w_up, fp8=fp8)  # [..., F]
    return matmul(h, w_down, fp8=fp8)


class MLP(nn.Module):
    """Dense gated MLP, used for the first dense layers and for shared experts."""

    d_model: int
    ffn: int
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    fp8: bool = False

    @nn.compact
    def __call__(self, x):
        def weight(name, shape, axes):
            w = self.param(name, dense_init(self.init_std, axes), shape, self.param_dtype)
            return w.astype(self.dtype)

        w_gate = weight("gate", (self.d_model, self.ffn), ("embed", "mlp"))
        w_up = weight("up", (self.d_model, self.ffn), ("embed", "mlp"))
        w_down = weight("down", (self.ffn, self.d_model), ("mlp", "embed"))
        return swiglu(x.astype(self.dtype), w_gate, w_up, w_down, fp8=self.fp8)
