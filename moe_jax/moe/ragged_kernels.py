"""Which grouped-matmul kernel the dropless engine runs, picked at trace time by backend.

Shapes: R rows of the expert-sorted buffer, K contracted, N output, E experts (groups).

Every implementation computes `jax.lax.ragged_dot(lhs [R, K], rhs [E, K, N],
group_sizes [E]) -> [R, N]`: rows are sorted by expert, expert e owns the next
group_sizes[e] rows, and rows past sum(group_sizes) come out as zeros.

- "tiled" (CPU): not a ragged dot at all; `grouped_matmul.tiled_moe` runs the whole
  expert MLP tile by tile (a ragged dot on CPU is a masked dense product doing E times
  the work).
- "tokamax" (GPU/TPU, when the optional `tokamax` package imports): its Pallas
  grouped-matmul kernels, Mosaic GPU on NVIDIA Hopper/Blackwell and Mosaic TPU (the
  megablox kernel MaxText runs) on TPU v5+, with their own backward kernels. tokamax
  picks among its kernels itself and falls back to XLA's ragged dot for a device or
  dtype its kernels refuse, so asking for it is never worse than "ragged_dot".
  It needs jax >= 0.11.1 and is not a dependency of this package
  (`pip install moe_jax[accelerators]`).
- "ragged_dot": `jax.lax.ragged_dot`, autodiff for the backward. XLA lowers it to a
  grouped matmul on TPU; on NVIDIA GPUs only with
  --xla_gpu_experimental_use_ragged_dot_fusion (cuDNN), otherwise jaxlib 0.10
  materialises the dense product (marin-community/marin#7012). The fallback when
  tokamax is absent.

Measure the accelerator at hand before trusting either (benchmarks/moe_layer.py
--implementation).
"""

from __future__ import annotations

import importlib

import jax

IMPLEMENTATIONS = ("tiled", "tokamax", "ragged_dot")


def tokamax_module():
    """The tokamax package, or None where it is not installed (or cannot import with this
    jax). Imported here, at trace time, so that CPU users never pay for it."""
    try:
        return importlib.import_module("tokamax")
    except ImportError:
        return None


def default_implementation() -> str:
    """"tiled" on CPU; on GPU/TPU "tokamax" when it imports, else "ragged_dot"."""
    if jax.default_backend() == "cpu":
        return "tiled"
    return "tokamax" if tokamax_module() is not None else "ragged_dot"


def check_implementation(implementation: str) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}: expected one of {IMPLEMENTATIONS}")
    if implementation == "tokamax" and tokamax_module() is None:
        raise ValueError("implementation='tokamax' needs the tokamax package (jax >= 0.11.1): "
                         "pip install tokamax, or use 'ragged_dot'")
    return implementation


def ragged_dot(lhs, rhs, group_sizes, implementation: str):
    """lhs [R, K] sorted by expert, rhs [E, K, N], group_sizes [E] int32 -> [R, N] in the
    operands' dtype, accumulated in float32."""
    out_dtype = jax.numpy.result_type(lhs, rhs)
    if implementation == "tokamax":
        return tokamax_module().ragged_dot(lhs, rhs, group_sizes, preferred_element_type=out_dtype)
    if implementation == "ragged_dot":
        return jax.lax.ragged_dot(lhs, rhs, group_sizes, preferred_element_type=out_dtype)
    raise ValueError(f"implementation={implementation!r}: expected 'tokamax' or 'ragged_dot'")
