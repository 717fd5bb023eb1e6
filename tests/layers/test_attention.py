import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from helpers import tiny_model_config
from moe_jax.layers.attention import MLA, MLAConfig
from moe_jax.layers.rope import RopeConfig, apply_rope, rope_inv_freq


def rms(x, scale, eps):
    return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def plain_mha(p, x, m):
    """Ordinary multi-head attention on keys/values decompressed from the MLA latent,
    written as explicit per-head loops over one sequence."""
    b, t, _ = x.shape
    pos = jnp.arange(t)
    inv_freq = rope_inv_freq(RopeConfig.from_config(m))
    if m.q_lora_rank:
        q = jnp.einsum("btq,qhk->bthk", rms(x @ p["q_a"], p["q_a_norm"]["scale"], m.rms_eps), p["q_b"])
    else:
        q = jnp.einsum("btd,dhk->bthk", x, p["q"])
    kv_a = x @ p["kv_a"]
    latent = rms(kv_a[..., : m.kv_lora_rank], p["kv_a_norm"]["scale"], m.rms_eps)
    kv = jnp.einsum("btl,lhk->bthk", latent, p["kv_b"])
    out = np.zeros((b, t, m.num_heads, m.v_head_dim), np.float32)
    for bi in range(b):
        k_rope = apply_rope(kv_a[bi, :, m.kv_lora_rank:], pos, inv_freq)  # [T, R], one per token
        for h in range(m.num_heads):
            q_h = jnp.concatenate([q[bi, :, h, : m.qk_nope_head_dim],
                                   apply_rope(q[bi, :, h, m.qk_nope_head_dim:], pos, inv_freq)], -1)
            k_h = jnp.concatenate([kv[bi, :, h, : m.qk_nope_head_dim], k_rope], -1)
            v_h = kv[bi, :, h, m.qk_nope_head_dim:]
            scores = q_h @ k_h.T * MLAConfig.from_config(m).softmax_scale
            scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
            out[bi, :, h] = jax.nn.softmax(scores, -1) @ v_h
    return jnp.einsum("bthv,hvd->btd", out, p["o"])


@pytest.mark.parametrize("q_lora_rank", [0, 48])
def test_mla_equals_mha_on_decompressed_keys_values(q_lora_rank):
    m = tiny_model_config(q_lora_rank=q_lora_rank)
    layer = MLA(MLAConfig.from_config(m))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, m.d_model))
    pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
    params = nn.unbox(layer.init(jax.random.PRNGKey(1), x, pos))["params"]
    y = layer.apply({"params": params}, x, pos)
    np.testing.assert_allclose(y, plain_mha(params, x, m), atol=1e-5)


def test_future_tokens_never_change_earlier_outputs():
    m = tiny_model_config()
    layer = MLA(MLAConfig.from_config(m))
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 10, m.d_model))
    pos = jnp.arange(10)[None]
    params = layer.init(jax.random.PRNGKey(1), x, pos)
    changed = x.at[:, 6:].set(jax.random.normal(jax.random.PRNGKey(2), (1, 4, m.d_model)))
    y, y2 = layer.apply(params, x, pos), layer.apply(params, changed, pos)
    np.testing.assert_allclose(y[:, :6], y2[:, :6], atol=1e-6)
    assert float(jnp.abs(y[:, 6:] - y2[:, 6:]).max()) > 1e-3


def test_packed_segments_attend_only_within_themselves():
    m = tiny_model_config()
    layer = MLA(MLAConfig.from_config(m))
    a = jax.random.normal(jax.random.PRNGKey(0), (1, 4, m.d_model))
    b = jax.random.normal(jax.random.PRNGKey(1), (1, 5, m.d_model))
    params = layer.init(jax.random.PRNGKey(2), a, jnp.arange(4)[None])
    packed = jnp.concatenate([a, b, jnp.zeros((1, 1, m.d_model))], axis=1)
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0]])
    segments = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0]])
    y = layer.apply(params, packed, positions, segments)
    np.testing.assert_allclose(y[:, :4], layer.apply(params, a, jnp.arange(4)[None]), atol=1e-5)
    np.testing.assert_allclose(y[:, 4:9], layer.apply(params, b, jnp.arange(5)[None]), atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(y)))


def full_square_attention(q, k, v, mask, scale):
    """Every query against every key, the mask applied to the whole square; rows with no
    visible key give 0."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    logits = jnp.where(mask, logits, -1e30)
    probs = jax.nn.softmax(logits, -1) * jnp.any(mask, -1, keepdims=True)
    return jnp.einsum("bhqk,bkhv->bqhv", probs, v)


@pytest.mark.parametrize("length", [5, 37, 100, 128, 130])
def test_query_blocks_compute_the_full_causal_square(length):
    """The kernel skips the keys after each query block; the result and all three
    gradients must be the full-square computation's, with packed segments, padding rows
    (attending to nothing) and lengths that do not divide into blocks."""
    from moe_jax.layers.attention import attention_mask, dot_product_attention, query_blocks

    b, h, dk, dv = 3, 2, 6, 4
    rng = np.random.default_rng(length)
    q, k = (jnp.asarray(rng.normal(size=(b, length, h, dk)), jnp.float32) for _ in range(2))
    v = jnp.asarray(rng.normal(size=(b, length, h, dv)), jnp.float32)
    cut = rng.integers(1, length + 1, size=b)
    segments = np.where(np.arange(length)[None] < cut[:, None], 1, 2)
    segments[1, -3:] = 0  # padding at the end of one row
    positions = np.arange(length)[None] - np.where(segments == 2, cut[:, None], 0)
    mask = attention_mask(jnp.asarray(positions), jnp.asarray(positions),
                          jnp.asarray(segments), jnp.asarray(segments))
    weights = jnp.asarray(rng.normal(size=(b, length, h, dv)), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask, 0.3) * weights)

    got, got_grads = jax.value_and_grad(loss(dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    want, want_grads = jax.value_and_grad(loss(full_square_attention), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    out = dot_product_attention(q, k, v, mask, 0.3)
    np.testing.assert_array_equal(out[1, -3:], 0.0)  # padding rows attend to nothing
    assert (length > query_blocks(length)) == (length > 32)  # several blocks from 33 tokens on
