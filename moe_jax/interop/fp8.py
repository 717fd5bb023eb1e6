"""DeepSeek's block-scaled FP8 weights: dequantize on import, quantize on export.

DeepSeek-V3 ships linear weights W [M, N] as float8_e4m3fn plus `<name>_scale_inv`
S [ceil(M/b), ceil(N/b)] float32 with b = 128: one scale per b x b block, the blocks at
the right and bottom edges partial when M or N is not a multiple of b. The float weight
is W[i, j] * S[i // b, j // b], computed in float32 and then cast (DeepSeek's
`weight_dequant` kernel does the same).

Both directions work one row of blocks at a time so that the float32 temporary is
b x N, not M x N.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

BLOCK = 128
FP8_DTYPE = np.dtype(ml_dtypes.float8_e4m3fn)
FP8_MAX = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)  # 448
SCALE_SUFFIX = "_scale_inv"
QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                       "weight_block_size": [BLOCK, BLOCK]}


def scale_shape(shape, block=(BLOCK, BLOCK)) -> tuple[int, int]:
    """[M, N] -> [ceil(M/b0), ceil(N/b1)]."""
    rows, cols = shape
    return math.ceil(rows / block[0]), math.ceil(cols / block[1])


def dequantize(weight: np.ndarray, scale_inv: np.ndarray, out_dtype=np.float32,
               block=(BLOCK, BLOCK)) -> np.ndarray:
    """weight [M, N] (float8) * scale_inv [ceil(M/b0), ceil(N/b1)] per block -> [M, N] out_dtype."""
    if weight.ndim != 2 or tuple(scale_inv.shape) != scale_shape(weight.shape, block):
        raise ValueError(f"fp8 weight {list(weight.shape)} needs scales of shape "
                         f"{list(scale_shape(weight.shape, block)) if weight.ndim == 2 else '?'}, "
                         f"got {list(scale_inv.shape)}")
    rows, cols = weight.shape
    out = np.empty((rows, cols), out_dtype)
    for i in range(scale_inv.shape[0]):
        r = slice(i * block[0], min((i + 1) * block[0], rows))
        per_col = np.repeat(scale_inv[i].astype(np.float32), block[1])[:cols]  # [N]
        out[r] = weight[r].astype(np.float32) * per_col
    return out


def quantize(weight: np.ndarray, block=(BLOCK, BLOCK)) -> tuple[np.ndarray, np.ndarray]:
    """[M, N] float -> (float8_e4m3fn [M, N], scale_inv float32 [ceil(M/b0), ceil(N/b1)]).

    Each block is scaled so that its largest magnitude maps to 448 (e4m3's maximum);
    an all-zero block gets scale 1.
    """
    rows, cols = weight.shape
    n_row_blocks, n_col_blocks = scale_shape(weight.shape, block)
    q = np.empty((rows, cols), FP8_DTYPE)
    scales = np.empty((n_row_blocks, n_col_blocks), np.float32)
    pad = n_col_blocks * block[1] - cols
    for i in range(n_row_blocks):
        r = slice(i * block[0], min((i + 1) * block[0], rows))
        w = np.pad(weight[r].astype(np.float32), ((0, 0), (0, pad)))  # [b0', n_col_blocks*b1]
        blocks = w.reshape(w.shape[0], n_col_blocks, block[1])
        amax = np.abs(blocks).max(axis=(0, 2))  # [n_col_blocks]
        s = np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np.float32)
        scales[i] = s
        q[r] = (blocks / s[None, :, None]).reshape(w.shape)[:, :cols].astype(FP8_DTYPE)
    return q, scales
