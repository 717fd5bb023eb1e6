"""The KV cache for MLA models: per token and layer, only the latent c_kv [L] and the
rope key [R]; per sequence, how many real tokens it holds.

Layout (one entry per decoder stack, named as the parameters are, leading layer axis
whether or not the layers are scanned):

    c_kv[name]    [n_layers, B, S, kv_lora_rank]
    k_rope[name]  [n_layers, B, S, qk_rope_head_dim]
    lengths       int32 [B]   real tokens cached per row (prompt + generated so far)
    index         int32 []    next slot to write, the same for every row

Prompts are LEFT-padded (as `data.pipeline.eval_batches` yields them by default and
`infer/greedy.py` expects): row b's tokens occupy slots [index - lengths[b], index), so
every row writes its next token into the same slot and an update is one
`dynamic_update_slice`. A token's rope position is its index within its own row
(slot - first real slot), as in training. Right-padded prompts can be converted with
`left_pad`.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.models.transformer import layer_stacks


@flax.struct.dataclass
class KVCache:
    c_kv: dict
    k_rope: dict
    lengths: jax.Array
    index: jax.Array

    @property
    def max_len(self) -> int:
        return next(iter(self.c_kv.values())).shape[2]

    def starts(self):
        """int32 [B]: the slot of each row's first real token."""
        return self.index - self.lengths

    def valid(self, upto):
        """bool [B, S]: slots holding a real token of the row, below slot `upto`."""
        slots = jnp.arange(self.max_len, dtype=jnp.int32)[None, :]
        return (slots >= self.starts()[:, None]) & (slots < upto)

    def arrays(self):
        """{stack name: (c_kv, k_rope)}, the form `forward_with_cache` takes."""
        return {name: (self.c_kv[name], self.k_rope[name]) for name in self.c_kv}


def init_cache(model_config, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache for `batch` rows of up to `max_len` tokens (prompt included).

    dtype defaults to the model's compute dtype.
    """
    m = model_config
    dtype = jnp.dtype(dtype or m.dtype)
    c_kv, k_rope = {}, {}
    for name, _, count in layer_stacks(m):
        c_kv[name] = jnp.zeros((count, batch, max_len, m.kv_lora_rank), dtype)
        k_rope[name] = jnp.zeros((count, batch, max_len, m.qk_rope_head_dim), dtype)
    return KVCache(c_kv=c_kv, k_rope=k_rope, lengths=jnp.zeros((batch,), jnp.int32),
                   index=jnp.zeros((), jnp.int32))


def cache_bytes_per_token(model_config, dtype=None) -> int:
    """(kv_lora_rank + qk_rope_head_dim) x num_layers x bytes per element."""
    m = model_config
    itemsize = jnp.dtype(dtype or m.dtype).itemsize
    return (m.kv_lora_rank + m.qk_rope_head_dim) * m.num_layers * itemsize


def mha_cache_bytes_per_token(model_config, dtype=None) -> int:
    """The same model with ordinary multi-head attention caching full per-head keys
    (qk_nope + rope dims) and values: (N + R + V) x heads x num_layers x bytes."""
    m = model_config
    itemsize = jnp.dtype(dtype or m.dtype).itemsize
    per_head = m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim
    return per_head * m.num_heads * m.num_layers * itemsize


def left_pad(tokens, lengths, pad_id: int):
    """Right-padded [B, P] prompts -> left-padded (host-side numpy)."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    out = np.full_like(tokens, pad_id)
    width = tokens.shape[1]
    for row, n in enumerate(lengths):
        out[row, width - n:] = tokens[row, :n]
    return out
