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
