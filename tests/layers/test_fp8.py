"""FP8 matmuls (DeepSeek-V3 fine-grained scaling): scale layout, error bounds, gradients.

Error arithmetic used below. e4m3 keeps 3 mantissa bits, so rounding a normal number to
nearest has relative error at most u = 2^-4; below the smallest normal (2^-6 times the
block's scale) the spacing is 2^-9 scale, so the absolute error is at most 2^-10 scale.
Per element, |x^ - x| <= u |x| + 2^-10 s_x with s_x the scale of x's own block.
"""

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import pytest

from moe_jax.models.config import ConfigError, base_model_config, validate_model_config
from moe_jax.layers import fp8

U = 2.0**-4  # e4m3 unit roundoff (3 mantissa bits)
SUBNORMAL = 2.0**-10  # half the subnormal spacing, in units of the block scale


def _error_bound(x, w):
    """Elementwise bound on |fp8(x) @ fp8(w) - x @ w|:
    sum_k (|x^ - x| |w^| + |x| |w^ - w|) with the per-element bound above."""
    _, sx = fp8.quantize(x, fp8.ACTIVATION_TILE)
    _, sw = fp8.quantize(w, fp8.WEIGHT_BLOCK)
    sx_full = np.repeat(np.asarray(sx), 128, axis=1)[:, : x.shape[1]]
    sw_full = np.repeat(np.repeat(np.asarray(sw), 128, 0), 128, 1)[: w.shape[0], : w.shape[1]]
    ex = U * np.abs(x) + SUBNORMAL * sx_full
    ew = U * np.abs(w) + SUBNORMAL * sw_full
    w_hat = np.abs(w) + ew
    # 1e-5 relative slack for the float32 sums themselves.
    return (ex @ w_hat + np.abs(x) @ ew) * (1 + 1e-5) + 1e-6


def _blocky(key, shape, block, decades=3.0):
    """Gaussian entries times one factor 10^U(-decades, decades) per block: magnitudes
    that differ by orders of magnitude between blocks, so only the right scale layout
    keeps every block's relative precision."""
    k1, k2 = jax.random.split(key)
    grid = fp8.scale_shape(shape, block)
    factor = 10.0 ** jax.random.uniform(k2, grid, minval=-decades, maxval=decades)
    for axis, b in enumerate(block):
        factor = jnp.repeat(factor, b, axis=axis)
    return np.asarray(jax.random.normal(k1, shape) * factor[: shape[0], : shape[1]], np.float32)


def test_activation_tiles_one_scale_per_token_per_128_channels():
    # 3 tokens x 200 channels: tiles [0, 128) and a partial [128, 200).
    x = np.array(jax.random.normal(jax.random.PRNGKey(0), (3, 200)))
    x[1, 130] = 50.0  # an outlier in token 1's second tile only
    q, scale = fp8.quantize(jnp.asarray(x), fp8.ACTIVATION_TILE)
    assert q.dtype == jnp.float8_e4m3fn and q.shape == (3, 200)
    assert scale.shape == (3, 2)
    expected = np.stack([np.abs(x[:, :128]).max(1), np.abs(x[:, 128:]).max(1)], axis=1) / 448.0
    np.testing.assert_allclose(scale, expected, rtol=1e-6)
    # Each tile's largest element lands on e4m3's maximum, 448.
    qf = np.asarray(q, np.float32)
    np.testing.assert_array_equal(np.abs(qf[:, :128]).max(1), 448.0)
    np.testing.assert_array_equal(np.abs(qf[:, 128:]).max(1), 448.0)
    # The outlier coarsens only its own tile.
    assert scale[1, 1] == pytest.approx(50.0 / 448.0) and scale[1, 0] < 5.0 / 448.0


def test_weight_blocks_match_the_checkpoint_format():
    # 300 x 260: partial blocks at the bottom and right edges, as in HF FP8 checkpoints.
    w = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (300, 260)))
    q, scale = fp8.quantize(jnp.asarray(w), fp8.WEIGHT_BLOCK)
    q_ref, scale_ref = fp8.quantize_weight(w)
    assert scale.shape == fp8.scale_shape(w.shape) == (3, 3)
    np.testing.assert_allclose(scale, scale_ref, rtol=2e-7)
    np.testing.assert_array_equal(np.asarray(q).view(np.uint8), q_ref.view(np.uint8))
    np.testing.assert_allclose(fp8.dequantize(q, scale, fp8.WEIGHT_BLOCK),
                               fp8.dequantize_weight(q_ref, scale_ref), rtol=1e-6)


def test_all_zero_block_gets_scale_one():
    x = jnp.zeros((2, 64))
    q, scale = fp8.quantize(x, fp8.ACTIVATION_TILE)
    np.testing.assert_array_equal(scale, 1.0)
    np.testing.assert_array_equal(np.asarray(q, np.float32), 0.0)


def test_matmul_within_elementwise_bound_that_wrong_layouts_break():
    # K = 320 (not a multiple of 128) and magnitudes varying by 10^±3 between blocks.
    keys = jax.random.split(jax.random.PRNGKey(2))
    x = _blocky(keys[0], (96, 320), fp8.ACTIVATION_TILE)
    w = _blocky(keys[1], (320, 192), fp8.WEIGHT_BLOCK)
    exact = x.astype(np.float64) @ w.astype(np.float64)
    bound = _error_bound(x, w)
    y = np.asarray(fp8.fp8_matmul(jnp.asarray(x), jnp.asarray(w)), np.float64)
    assert np.all(np.abs(y - exact) <= bound)

    def with_layout(x_block, w_block):
        xq = fp8.fake_quantize(jnp.asarray(x), x_block)
        wq = fp8.fake_quantize(jnp.asarray(w), w_block)
        return np.asarray(xq @ wq, np.float64)

    # One scale per tensor, or activation tiles along the wrong axis: the small blocks
    # lose their precision and the bound fails.
    for wrong in (with_layout(x.shape, w.shape), with_layout((128, 1), fp8.WEIGHT_BLOCK)):
        assert np.any(np.abs(wrong - exact) > bound)


def test_matmul_relative_frobenius_error():
    # With independent rounding errors of RMS at most u / sqrt(3) per operand (uniform
    # within +-u relative), ||fp8 - exact||_F / ||exact||_F <= sqrt(2) u / sqrt(3)
    # = 0.051 for random signs; measured 0.037. A result computed without rounding (or
    # far off) fails the lower / upper end.
    keys = jax.random.split(jax.random.PRNGKey(3))
    x = jax.random.normal(keys[0], (200, 300))
    w = jax.random.normal(keys[1], (300, 260))
    exact = x @ w
    err = float(jnp.linalg.norm(fp8.fp8_matmul(x, w) - exact) / jnp.linalg.norm(exact))
    assert 0.01 < err < np.sqrt(2.0 / 3.0) * U


def test_per_tile_beats_per_tensor_with_outlier_tokens():
    # 4 outlier tokens 2^16 times larger: with one scale per tensor (~4 * 2^16 / 448) the
    # ordinary tokens (|x| ~ 1) map to ~2^-9, below e4m3's normal range (2^-6), where
    # steps are 2^-9: a relative error of order 1 instead of 2^-4.
    keys = jax.random.split(jax.random.PRNGKey(4))
    x = jax.random.normal(keys[0], (64, 256)).at[:4].multiply(2.0**16)
    w = jax.random.normal(keys[1], (256, 128))
    exact = (x @ w)[4:]
    per_tile = fp8.fp8_matmul(x, w)[4:]
    per_tensor = (fp8.fake_quantize(x, x.shape) @ fp8.fake_quantize(w, fp8.WEIGHT_BLOCK))[4:]
    err = lambda y: float(jnp.linalg.norm(y - exact) / jnp.linalg.norm(exact))  # noqa: E731
    assert err(per_tile) < 0.051
    assert err(per_tensor) > 4 * err(per_tile)


def test_backward_quantises_its_gemm_inputs_and_tracks_float32():
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    x = jax.random.normal(keys[0], (150, 192))
    w = jax.random.normal(keys[1], (192, 96))
    dy = jax.random.normal(keys[2], (150, 96))
    _, vjp = jax.vjp(fp8.fp8_matmul, x, w)
    dx, dw = vjp(dy)
    # dgrad: dy in 1x128 tiles along N, w in its 128x128 blocks; wgrad: 128x1 tiles.
    q = fp8.fake_quantize
    np.testing.assert_allclose(dx, q(dy, (1, 128)) @ q(w, (128, 128)).T, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw, q(x, (128, 1)).T @ q(dy, (128, 1)), rtol=1e-5, atol=1e-4)
    # And both are within the forward's error of the float32 gradients.
    for got, ref in ((dx, dy @ w.T), (dw, x.T @ dy)):
        assert float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref)) < 0.051


def test_matmul_helper_contracts_leading_weight_axes():
    keys = jax.random.split(jax.random.PRNGKey(6))
    out = jax.random.normal(keys[0], (2, 5, 4, 32))  # [B, T, H, V]
    w_o = jax.random.normal(keys[1], (4, 32, 64))  # [H, V, D]
    plain = fp8.matmul(out, w_o, fp8=False, contract=2)
    np.testing.assert_array_equal(plain, jnp.einsum("bthv,hvd->btd", out, w_o))
    quant = fp8.matmul(out, w_o, fp8=True, contract=2)
    assert quant.shape == (2, 5, 64)
    assert float(jnp.linalg.norm(quant - plain) / jnp.linalg.norm(plain)) < 0.051


@pytest.mark.parametrize("w_shape,contract", [((24, 40), 1), ((24, 4, 10), 1), ((4, 6, 40), 2)])
def test_plain_product_runs_flat_with_tensordots_numbers(w_shape, contract):
    """Every plain product is computed on [B*T, K] @ [K, N] (faster weight gradient on
    CPU), the per-head projections' weights of 3 axes included; its value and both
    gradients must be tensordot's, and a transposed or mis-flattened layout would not be."""
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    x = jax.random.normal(keys[0], (3, 7, 24) if contract == 1 else (3, 7, 4, 6))
    w = jax.random.normal(keys[1], w_shape)
    g = jax.random.normal(keys[2], (3, 7) + w_shape[contract:])

    def vjp(f):
        y, back = jax.vjp(f, x, w)
        return (y, *back(g))

    flat = vjp(lambda x, w: fp8.matmul(x, w, fp8=False, contract=contract))
    reference = vjp(lambda x, w: jnp.tensordot(x, w, axes=contract))
    for got, want in zip(flat, reference):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_inputs_come_back_bfloat16():
    x = jnp.ones((4, 64), jnp.bfloat16)
    w = jnp.ones((64, 8), jnp.bfloat16)
    y = fp8.fp8_matmul(x, w)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32), 64.0)
    dx, dw = jax.grad(lambda x, w: fp8.fp8_matmul(x, w).astype(jnp.float32).sum(), (0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16


def test_e4m3_constants():
    assert float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max) == 448.0
    assert ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).nmant == 3  # u = 2^-(3+1)


@pytest.mark.parametrize("value", ["yes", 2, None])
def test_config_switch_is_validated(value):
    m = base_model_config()
    assert m.fp8 is False
    validate_model_config(m)
    m.fp8 = True
    validate_model_config(m)
    # A ConfigDict refuses a non-bool for a bool field; a dict-built config does not.
    m = ml_collections.ConfigDict({**m.to_dict(), "fp8": value})
    with pytest.raises(ConfigError, match="model.fp8.*True or False"):
        validate_model_config(m)
