"""Multi-head Latent Attention (DeepSeek-V2/V3) with causal and packed-segment masking.

Shapes: B batch, T length, D model, H heads, N no-position head dim (qk_nope), R rope
head dim, V value head dim, L kv_lora_rank (the compressed latent), Q q_lora_rank.

Keys and values are produced from one latent c_kv [B, T, L] per token plus one rope key
[B, T, R] shared by all heads; that pair is all an inference cache has to keep.

Decoding (`cache=` given, see `MLACache`) stores that pair per token and uses DeepSeek's
absorbed projections: W_kv_b's key part W_uk is folded into the query
(q_nope @ W_uk lands in latent space) and its value part W_uv is applied after
attention, so each step attends directly over the S cached latents and never
decompresses per-head keys or values. S is the cache length.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax.layers.initializers import dense_init
from moe_jax.layers.norms import RMSNorm
from moe_jax.layers.rope import RopeConfig, apply_rope, rope_cos_sin_scale, rope_inv_freq, softmax_scale
from moe_jax.layers.fp8 import matmul


def attention_mask(q_positions, k_positions, q_segments=None, k_segments=None):
    """Boolean [B, 1, Tq, Tk]: key position <= query position, and same packed segment.

    Segment id 0 marks padding, which attends to nothing and is attended by nothing.
    """
    mask = k_positions[:, None, :] <= q_positions[:, :, None]
    if q_segments is not None:
        same = q_segments[:, :, None] == k_segments[:, None, :]
        mask = mask & same & (k_segments[:, None, :] > 0)
    return mask[:, None, :, :]


def _masked_softmax(logits, mask):
    """Softmax over the last axis of the entries `mask` keeps; a row that keeps none is 0
    (padding would otherwise average everything)."""
    logits = jnp.where(mask, logits, -jnp.inf)
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # an empty row: exp(-inf) = 0 everywhere
    e = jnp.exp(logits - top)
    return e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), jnp.finfo(e.dtype).tiny)


def _attend(q, k, v, mask):
    """Heads-major q [b,H,t,Dk] (already scaled), k [b,H,s,Dk], v [b,H,s,V], mask
    [b,1,t,s] -> [b,H,t,V]. Batch and heads lead, so the products need no transposes."""
    logits = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32)
    probs = _masked_softmax(logits, mask)
    return jnp.matmul(probs.astype(v.dtype), v)


def query_blocks(length: int) -> int:
    """Rows per query block of `dot_product_attention`: a quarter of the sequence (so the
    causal products cost 10/16 of the full square), at least 32 rows."""
    return max(32, -(-length // 4))


def dot_product_attention(q, k, v, mask, scale):
    """Causal self-attention over T tokens: query i sees key j where j <= i and mask holds.

    q: [B,T,H,Dk], k: [B,T,H,Dk], v: [B,T,H,V], mask: [B,1,T,T] -> [B,T,H,V]. Every caller
    lays tokens out in order (positions rise within a segment), so `attention_mask` never
    lets a query see a later index; the index order is applied as well, which is what lets
    each block of queries skip the keys after its last row (unrolled at trace time; the
    sequence axis is never sharded, so the blocks are local on any mesh).
    """
    t = q.shape[1]
    mask = mask & (jnp.arange(t)[None, :] <= jnp.arange(t)[:, None])
    qh = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)  # scaled once, on the smaller side
    kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    if not isinstance(t, int):  # a symbolic length (jax.export): one block, the whole square
        return jnp.swapaxes(_attend(qh, kh, vh, mask), 1, 2)
    block = query_blocks(t)
    out = jnp.concatenate([_attend(qh[:, :, s:s + block], kh[:, :, :s + block], vh[:, :, :s + block],
                                   mask[:, :, s:s + block, :s + block]) for s in range(0, t, block)],
                          axis=2)
    return jnp.swapaxes(out, 1, 2)


class MLACache(NamedTuple):
    """One layer's view of the inference cache for a call that appends T new tokens.

    c_kv:  [B, S, L]  cached normalised latents (any dtype; cast to the compute dtype)
    k_rope: [B, S, R] cached rope keys, rope already applied
    index: int32 []   slot where the first new token is written (the same for all rows:
                      prompts are left-padded)
    valid: bool [B, S] slots holding a real token of the row (padding False), the new
                      tokens' slots included; causality is added from `index`
    """

    c_kv: jax.Array
    k_rope: jax.Array
    index: jax.Array
    valid: jax.Array


def absorbed_attention(q_nope, q_rope, c_kv, k_rope, w_kv_b, mask, scale):
    """Attention over latents with W_uk folded into the query and W_uv applied after.

    q_nope [B,T,H,N], q_rope [B,T,H,R], c_kv [B,S,L], k_rope [B,S,R], w_kv_b [L,H,N+V],
    mask [B,1,T,S] -> per-head outputs [B,T,H,V]. Equal to decompressing k = c_kv W_uk,
    v = c_kv W_uv and running `dot_product_attention`, by associativity:
    q_nope . (c W_uk) = (q_nope W_uk^T) . c  and  sum_s p_s (c_s W_uv) = (sum_s p_s c_s) W_uv.
    """
    n = q_nope.shape[-1]
    w_uk, w_uv = w_kv_b[..., :n], w_kv_b[..., n:]  # [L,H,N], [L,H,V]
    q_latent = jnp.einsum("bthn,lhn->bthl", q_nope, w_uk)  # [B,T,H,L]
    logits = (jnp.einsum("bthl,bsl->bhts", q_latent, c_kv, preferred_element_type=jnp.float32)
              + jnp.einsum("bthr,bsr->bhts", q_rope, k_rope, preferred_element_type=jnp.float32))
    probs = _masked_softmax(logits * scale, mask)
    out_latent = jnp.einsum("bhts,bsl->bthl", probs.astype(c_kv.dtype), c_kv)  # [B,T,H,L]
    return jnp.einsum("bthl,lhv->bthv", out_latent, w_uv)


@dataclasses.dataclass(frozen=True)
class MLAConfig:
    """What attention reads from the model config (same field names)."""

    d_model: int  # D
    num_heads: int  # H
    q_lora_rank: int  # Q; 0: a plain query projection
    kv_lora_rank: int  # L
    qk_nope_head_dim: int  # N
    qk_rope_head_dim: int  # R
    v_head_dim: int  # V
    rope: RopeConfig
    rms_eps: float = 1e-6
    init_std: float = 0.02
    fp8: bool = False  # the projections in FP8 (layers/fp8.py); the attention core stays high precision

    @classmethod
    def from_config(cls, m) -> "MLAConfig":
        return cls(d_model=m.d_model, num_heads=m.num_heads, q_lora_rank=m.q_lora_rank,
                   kv_lora_rank=m.kv_lora_rank, qk_nope_head_dim=m.qk_nope_head_dim,
                   qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim,
                   rope=RopeConfig.from_config(m), rms_eps=m.rms_eps, init_std=m.init_std,
                   fp8=m.fp8)

    @property
    def qk_head_dim(self) -> int:
        """Query/key width per head: the no-position part plus the decoupled rope part."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        return softmax_scale(self.qk_head_dim, self.rope)


class MLA(nn.Module):
    """Multi-head Latent Attention."""

    config: MLAConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _weight(self, name, shape, axes):
        w = self.param(name, dense_init(self.config.init_std, axes), shape, self.param_dtype)
        return w.astype(self.dtype)

    def _project(self, x, w, contract=1):
        """x contracted with w's leading `contract` axes; FP8 when model.fp8 is on (the
        projections only: like DeepSeek-V3, the attention core stays in high precision)."""
        return matmul(x, w, fp8=self.config.fp8, contract=contract)

    def _norm(self, name, x):
        return RMSNorm(self.config.rms_eps, self.dtype, self.param_dtype, name=name)(x)

    def project_query(self, x, positions):
        """x [B,T,D] -> (q_nope [B,T,H,N], q_rope [B,T,H,R]) with rope applied."""
        m = self.config
        qk = m.qk_head_dim
        if m.q_lora_rank:
            w_qa = self._weight("q_a", (m.d_model, m.q_lora_rank), ("embed", "q_lora"))
            w_qb = self._weight("q_b", (m.q_lora_rank, m.num_heads, qk), ("q_lora", "heads", "kv"))
            q = self._project(self._norm("q_a_norm", self._project(x, w_qa)), w_qb)  # [B,T,H,N+R]
        else:
            w_q = self._weight("q", (m.d_model, m.num_heads, qk), ("embed", "heads", "kv"))
            q = self._project(x, w_q)  # [B,T,H,N+R]
        q_nope, q_rope = q[..., : m.qk_nope_head_dim], q[..., m.qk_nope_head_dim:]
        q_rope = apply_rope(q_rope, positions, rope_inv_freq(m.rope), rope_cos_sin_scale(m.rope))
        return q_nope, q_rope

    def compress_kv(self, x, positions):
        """x [B,T,D] -> (c_kv [B,T,L] normalised latent, k_rope [B,T,R] with rope applied).

        This pair is exactly what the inference cache stores per token.
        """
        m = self.config
        w_kva = self._weight("kv_a", (m.d_model, m.kv_lora_rank + m.qk_rope_head_dim),
                             ("embed", "kv_lora"))
        kv_a = self._project(x, w_kva)  # [B, T, L + R]
        c_kv = self._norm("kv_a_norm", kv_a[..., : m.kv_lora_rank])
        k_rope = apply_rope(kv_a[..., m.kv_lora_rank:], positions, rope_inv_freq(m.rope),
                            rope_cos_sin_scale(m.rope))
        return c_kv, k_rope

    def kv_up_weight(self):
        """W_kv_b [L, H, N + V]: decompresses the latent into per-head keys and values."""
        m = self.config
        return self._weight("kv_b", (m.kv_lora_rank, m.num_heads, m.qk_nope_head_dim + m.v_head_dim),
                            ("kv_lora", "heads", "kv"))

    def out_weight(self):
        m = self.config
        return self._weight("o", (m.num_heads, m.v_head_dim, m.d_model), ("heads", "kv", "embed"))

    def _decompressed_attention(self, q_nope, q_rope, c_kv, k_rope, positions, segment_ids):
        """Per-head keys and values from the latents, then masked attention over the T
        tokens themselves: the training forward, and the prefill of a cache."""
        m = self.config
        kv = self._project(c_kv, self.kv_up_weight())  # [B,T,H,N+V]
        k_nope, v = kv[..., : m.qk_nope_head_dim], kv[..., m.qk_nope_head_dim:]
        # The rope key is shared by all heads (decoupled RoPE).
        k_rope = jnp.broadcast_to(k_rope[:, :, None, :], k_nope.shape[:-1] + (m.qk_rope_head_dim,))
        q = jnp.concatenate([q_nope, q_rope], axis=-1)
        k = jnp.concatenate([k_nope, k_rope], axis=-1)
        mask = attention_mask(positions, positions, segment_ids, segment_ids)
        return dot_product_attention(q, k, v, mask, m.softmax_scale)  # [B,T,H,V]

    @nn.compact
    def __call__(self, x, positions, segment_ids=None, cache: MLACache | None = None,
                 prefill: bool = False):
        """x: [B,T,D], positions: [B,T] int, segment_ids: [B,T] int or None -> [B,T,D].

        With `cache`, returns (y [B,T,D], (c_kv [B,T,L], k_rope [B,T,R])): the new
        tokens' latents, which the caller writes into its cache at `cache.index`. Then
        `prefill=True` means the T tokens are the whole context (the cache is empty):
        attention runs decompressed over them with `segment_ids` masking, exactly as in
        training; otherwise it runs absorbed over the cache plus the new tokens.
        """
        x = x.astype(self.dtype)
        q_nope, q_rope = self.project_query(x, positions)
        c_new, k_rope_new = self.compress_kv(x, positions)
        if cache is None or prefill:
            out = self._decompressed_attention(q_nope, q_rope, c_new, k_rope_new, positions,
                                               segment_ids)
        else:
            out = self._absorbed_over_cache(q_nope, q_rope, c_new, k_rope_new, cache, x.shape[1])
        y = self._project(out, self.out_weight(), contract=2)  # [B,T,D]
        return y if cache is None else (y, (c_new, k_rope_new))

    def _absorbed_over_cache(self, q_nope, q_rope, c_new, k_rope_new, cache: MLACache, length):
        """The new tokens' queries over the cache with their own latents written in."""
        start = (0, cache.index, 0)
        update = jax.lax.dynamic_update_slice
        c_kv = update(cache.c_kv, c_new.astype(cache.c_kv.dtype), start)
        k_rope = update(cache.k_rope, k_rope_new.astype(cache.k_rope.dtype), start)
        slots = jnp.arange(c_kv.shape[1], dtype=jnp.int32)  # [S]
        query_slots = cache.index + jnp.arange(length, dtype=jnp.int32)  # [T]
        causal = slots[None, :] <= query_slots[:, None]  # [T, S]
        mask = (causal[None] & cache.valid[:, None, :])[:, None]  # [B,1,T,S]
        return absorbed_attention(q_nope, q_rope, c_kv.astype(self.dtype), k_rope.astype(self.dtype),
                                  self.kv_up_weight(), mask, self.config.softmax_scale)
