"""NF4 block quantisation: exact on its own levels, bounded error elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.lora.nf4 import NF4_LEVELS, NF4_MAX_HALF_GAP, NF4Tensor, nf4_bytes, quantize_nf4


def test_levels_times_absmax_round_trip_exactly():
    # Each 64-block holds all 16 levels (so its absmax is exactly `scale`) in a shuffled order.
    rng = np.random.default_rng(0)
    blocks = []
    for scale in (0.5, 2.0, 3.0):
        row = np.tile(NF4_LEVELS, 4) * scale
        blocks.append(rng.permutation(row))
    w = jnp.asarray(np.stack(blocks), jnp.float32)  # [3, 64]
    q = quantize_nf4(w)
    assert q.codes.dtype == jnp.uint4 and q.codes.shape == (3, 64)
    np.testing.assert_array_equal(np.asarray(q.absmax), [[0.5], [2.0], [3.0]])
    np.testing.assert_array_equal(np.asarray(q.dequantize()), np.asarray(w))


def test_error_is_within_half_the_widest_level_gap_times_block_absmax():
    w = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 80)) * 0.02  # 80: a padded last block
    q = quantize_nf4(w, block_size=64)
    assert q.absmax.shape == (2, 16, 2)
    err = np.abs(np.asarray(q.dequantize() - w))
    absmax = np.repeat(np.asarray(q.absmax), 64, axis=-1)[..., :80]
    # Widest gap -0.69619 - (-1) = 0.30381, so at most 0.15190 * absmax per element.
    assert NF4_MAX_HALF_GAP == pytest.approx(0.15190, abs=1e-5)
    assert np.all(err <= NF4_MAX_HALF_GAP * absmax + 1e-7)
    # Gaussian weights land mostly near a level: mean error far below the bound.
    assert err.mean() < 0.25 * NF4_MAX_HALF_GAP * absmax.mean()


def test_all_zero_block_and_bfloat16_output():
    w = jnp.zeros((4, 64)).at[0, 3].set(1.5)
    q = quantize_nf4(w)
    out = q.astype(jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(w))


def test_is_a_pytree_that_scans_over_its_leading_axis():
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 64))
    q = quantize_nf4(w)
    assert isinstance(jax.tree.map(lambda x: x, q), NF4Tensor)
    _, per_layer = jax.lax.scan(lambda c, layer: (c, layer.dequantize()), 0, q)
    np.testing.assert_array_equal(np.asarray(per_layer), np.asarray(q.dequantize()))


def test_stored_bytes_by_hand():
    # [2048, 1408]: 2,883,584 codes at half a byte = 1,441,792 B; 2048 rows x 22 blocks x 4 B
    # of absmax = 180,224 B.
    assert nf4_bytes((2048, 1408)) == 1_441_792 + 180_224


def test_bad_input_names_what_was_expected():
    with pytest.raises(ValueError, match="block_size"):
        quantize_nf4(jnp.ones((4, 64)), block_size=0)
    with pytest.raises(ValueError, match="floating-point"):
        quantize_nf4(jnp.ones((4, 64), jnp.int32))
