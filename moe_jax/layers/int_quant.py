"""Integer weight numerics: group-wise symmetric int8 / int4 with float32 scales.

A tensor is split into groups of `group` consecutive entries along one axis; each group
stores round(w / s) with s = max|w| / qmax over the group, qmax = 127 for int8 and 7 for
int4 (symmetric: -8 is never used, so 0 stays exact and the grid is the same on both
sides). Per entry the rounding error is at most s / 2 = max|w| / (2 qmax). An axis
shorter than `group` is one group; a length that is not a multiple ends in a partial
group (zero padding changes no maximum).

Storage: int8 values as int8; int4 values packed two per byte (`pack_int4`), scales as
float32. Values are kept with the group axis moved last (the layout the scales follow);
`dequantize` moves it back.

These are numerics only, beside the FP8 block numerics (fp8.py): which weights of a
model are quantised, and along which axis, is moe_jax.quant.weights' policy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

BITS = (8, 4)


class QuantizedTensor(NamedTuple):
    values: np.ndarray  # int8 [..., L] (group axis last), or uint8 packed int4
    scales: np.ndarray  # float32 [..., ceil(L / group)]
    bits: int
    group: int
    axis: int  # the group axis in the original shape
    shape: tuple[int, ...]  # the original shape


def qmax(bits: int) -> int:
    if bits not in BITS:
        raise ValueError(f"bits = {bits!r}: expected one of {list(BITS)}")
    return 2 ** (bits - 1) - 1


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int8 values in [-8, 7] -> uint8 [ceil(n / 2)]: entry 2i in the low nibble, 2i + 1 in
    the high one (two's complement nibbles); an odd count is padded with a zero."""
    flat = q.reshape(-1).astype(np.int8)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError("pack_int4: values outside [-8, 7]")
    flat = np.pad(flat, (0, flat.size % 2)).view(np.uint8) & 0x0F
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of `pack_int4`: the first `count` int8 values."""
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[:count]
    return ((nibbles.astype(np.int8) ^ 8) - 8).astype(np.int8)  # sign-extend 4 bits


def quantize(w: np.ndarray, bits: int, group_size: int, axis: int) -> QuantizedTensor:
    """Group-wise symmetric quantisation of `w` along `axis` (groups of
    min(group_size, length))."""
    if group_size <= 0:
        raise ValueError(f"group_size = {group_size!r}: expected a positive integer")
    top = qmax(bits)
    shape = tuple(np.shape(w))
    w = np.moveaxis(np.asarray(w, np.float32), axis, -1)  # [..., L]
    length = w.shape[-1]
    group = min(group_size, length)
    num_groups = math.ceil(length / group)
    padded = np.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, num_groups * group - length)])
    grouped = padded.reshape(w.shape[:-1] + (num_groups, group))
    amax = np.abs(grouped).max(axis=-1)  # [..., G]
    scales = np.where(amax > 0, amax / top, 1.0).astype(np.float32)
    q = np.clip(np.rint(grouped / scales[..., None]), -top, top).astype(np.int8)
    q = q.reshape(w.shape[:-1] + (num_groups * group,))[..., :length]
    values = pack_int4(q) if bits == 4 else q
    return QuantizedTensor(values, scales, bits, group, axis % len(shape), shape)


def integer_values(qt: QuantizedTensor) -> np.ndarray:
    """The int8 values [..., L] (group axis last), unpacked if int4."""
    moved = qt.shape[:qt.axis] + qt.shape[qt.axis + 1:] + (qt.shape[qt.axis],)
    if qt.bits == 4:
        return unpack_int4(qt.values, math.prod(moved)).reshape(moved)
    return qt.values.reshape(moved)


def dequantize(qt: QuantizedTensor, dtype=np.float32, xp=np) -> np.ndarray:
    """values * scale of their group, computed in float32, in the original layout.

    xp=jax.numpy dequantises int8 values and scales inside a traced function (an
    exported artefact keeps int8 weights); int4 unpacking is numpy only.
    """
    q = integer_values(qt).astype(np.float32)  # [..., L]
    length = q.shape[-1]
    per_entry = xp.repeat(qt.scales, qt.group, axis=-1)[..., :length]
    return xp.moveaxis(q * per_entry, -1, qt.axis).astype(dtype)


def nbytes(qt: QuantizedTensor) -> int:
    return qt.values.nbytes + qt.scales.nbytes


def dequantize_tree(tree, dtype=np.float32):
    """A nested dict with QuantizedTensor leaves -> the same dict of float arrays, every
    leaf (float ones too) in `dtype`: the inverse of moe_jax.quant.weights.quantize_tree."""
    if isinstance(tree, QuantizedTensor):
        return dequantize(tree, dtype)
    if isinstance(tree, dict):
        return {k: dequantize_tree(v, dtype) for k, v in tree.items()}
    return np.asarray(tree).astype(dtype)
