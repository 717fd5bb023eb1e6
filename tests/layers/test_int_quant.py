"""Integer weight numerics: per-group error bounds, short and partial groups, int4
packing, and bad widths named."""

import jax
import numpy as np
import pytest

from moe_jax.layers import int_quant


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group_size", [128, 32, 48])
def test_round_trip_error_within_half_a_step_of_each_group(bits, group_size):
    # [3, 200, 5] grouped along the 200-long axis 1: groups of 128 -> [128, 72];
    # 48 -> four of 48 and a partial 8.
    w = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 200, 5)))
    qt = int_quant.quantize(w, bits, group_size, axis=1)
    back = int_quant.dequantize(qt)
    assert back.shape == w.shape and back.dtype == np.float32
    num_groups = -(-200 // group_size)
    assert qt.scales.shape == (3, 5, num_groups)
    # Round to nearest: |error| <= scale / 2 = max|w over the group| / (2 qmax), per group.
    top = 2 ** (bits - 1) - 1
    for g in range(num_groups):
        rows = slice(g * group_size, (g + 1) * group_size)
        amax = np.abs(w[:, rows, :]).max(axis=1)  # [3, 5]
        err = np.abs(back[:, rows, :] - w[:, rows, :]).max(axis=1)
        np.testing.assert_allclose(qt.scales[..., g], amax / top, rtol=1e-6)
        assert np.all(err <= amax / (2 * top) * (1 + 1e-5))
    # Each group's largest entry is exact up to float32: it sits on +-qmax.
    assert np.abs(int_quant.integer_values(qt)).max() == top


def test_short_axis_is_one_group():
    w = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (32, 4)))
    qt = int_quant.quantize(w, 8, 128, axis=0)
    assert qt.group == 32 and qt.scales.shape == (4, 1)


def test_int4_packing_round_trip_is_exact():
    values = np.arange(-8, 8, dtype=np.int8)
    odd = np.concatenate([values, values[::-1], [5]]).astype(np.int8)  # 33 values
    for q in (values, odd, np.random.default_rng(0).integers(-8, 8, (7, 9)).astype(np.int8)):
        packed = int_quant.pack_int4(q)
        assert packed.dtype == np.uint8 and packed.size == (q.size + 1) // 2
        np.testing.assert_array_equal(int_quant.unpack_int4(packed, q.size), q.reshape(-1))
    # Entry 2i in the low nibble: [1, -1] -> 0x01 | 0xF0.
    assert int_quant.pack_int4(np.array([1, -1], np.int8)).tolist() == [0xF1]
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        int_quant.pack_int4(np.array([9], np.int8))


def test_bad_bits_and_group_size_are_named():
    with pytest.raises(ValueError, match="bits = 3"):
        int_quant.quantize(np.ones((4, 4)), 3, 128, 0)
    with pytest.raises(ValueError, match="group_size = 0"):
        int_quant.quantize(np.ones((4, 4)), 8, 0, 0)
