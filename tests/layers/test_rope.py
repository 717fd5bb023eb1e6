import math

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.layers import rope
from moe_jax.layers.rope import RopeConfig
from moe_jax.models.config import base_model_config


def rope_config(**kw):
    m = base_model_config()
    m.qk_nope_head_dim, m.qk_rope_head_dim = 24, 8
    for k, v in kw.items():
        m[k] = v
    return m


def test_yarn_factor_one_is_plain_rope():
    plain = rope_config(rope_scaling="none")
    yarn = rope_config(rope_scaling="yarn", rope_factor=1.0, rope_mscale=1.0, rope_mscale_all_dim=1.0)
    np.testing.assert_array_equal(rope.rope_inv_freq(RopeConfig.from_config(plain)), rope.rope_inv_freq(RopeConfig.from_config(yarn)))
    assert rope.rope_cos_sin_scale(RopeConfig.from_config(yarn)) == 1.0
    assert rope.softmax_scale(32, RopeConfig.from_config(yarn)) == rope.softmax_scale(32, RopeConfig.from_config(plain)) == 32 ** -0.5
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3, 8))
    pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
    np.testing.assert_array_equal(
        rope.apply_rope(x, pos, rope.rope_inv_freq(RopeConfig.from_config(plain))),
        rope.apply_rope(x, pos, rope.rope_inv_freq(RopeConfig.from_config(yarn)), rope.rope_cos_sin_scale(RopeConfig.from_config(yarn))))


def test_yarn_hand_checked_frequencies_and_scale():
    # dim R = 8, base 10000, factor 4, original context 64, beta_fast 32, beta_slow 1.
    # correction_dim(r) = R * ln(64 / (2 pi r)) / (2 ln 10000):
    #   r = 32: 8 * ln(0.31831) / 18.4207 = -0.4971 -> floor -1 -> clamp 0 = low
    #   r = 1:  8 * ln(10.1859) / 18.4207 =  1.0080 -> ceil 2 = high
    # ramp over i = 0..3: (i - 0) / 2 clipped = [0, 0.5, 1, 1]; extrapolated share 1 - ramp.
    # extrapolation 10000^(-2i/8) = [1, 0.1, 0.01, 0.001], interpolation = that / 4.
    # inv_freq = [1, 0.5 * 0.1 + 0.5 * 0.025, 0.0025, 0.00025] = [1, 0.0625, 0.0025, 0.00025]
    m = rope_config(rope_scaling="yarn", rope_factor=4.0, rope_original_max_position=64,
                    rope_beta_fast=32.0, rope_beta_slow=1.0, rope_mscale=1.0, rope_mscale_all_dim=1.0)
    assert rope.yarn_correction_range(32.0, 1.0, 8, 10000.0, 64) == (0, 2)
    np.testing.assert_allclose(rope.rope_inv_freq(RopeConfig.from_config(m)), [1.0, 0.0625, 0.0025, 0.00025], rtol=1e-6)
    # mscale(4) = 0.1 * ln 4 + 1 = 1.138629; softmax scale = 32^-0.5 * 1.138629^2 = 0.229187
    assert math.isclose(rope.yarn_mscale(4.0, 1.0), 1.1386294, rel_tol=1e-6)
    assert math.isclose(rope.softmax_scale(32, RopeConfig.from_config(m)), 0.2291869, rel_tol=1e-6)
    # mscale == mscale_all_dim: cos/sin are not rescaled (DeepSeek-V3's setting).
    assert rope.rope_cos_sin_scale(RopeConfig.from_config(m)) == 1.0
    m.rope_mscale_all_dim = 0.0  # then cos/sin carry mscale(4, 1) = 1.138629
    assert math.isclose(rope.rope_cos_sin_scale(RopeConfig.from_config(m)), 1.1386294, rel_tol=1e-6)


def test_rope_is_relative():
    # <rope(q, i), rope(k, j)> depends only on i - j.
    inv_freq = rope.rope_inv_freq(RopeConfig.from_config(rope_config()))
    q = jax.random.normal(jax.random.PRNGKey(1), (8,))
    k = jax.random.normal(jax.random.PRNGKey(2), (8,))

    def score(i, j):
        return jnp.dot(rope.apply_rope(q[None], jnp.array([i]), inv_freq)[0],
                       rope.apply_rope(k[None], jnp.array([j]), inv_freq)[0])

    np.testing.assert_allclose(score(7, 3), score(104, 100), rtol=1e-4)
    assert abs(float(score(7, 3)) - float(score(7, 5))) > 1e-4
