"""Which grouped-matmul kernel the dropless engine runs, picked at trace time by backend.

Shapes: R rows of the expert-sorted buffer, E experts (groups), I contracted and O
output features (D or F).

Every implementation computes `jax.lax.ragged_dot(lhs [R, I], rhs [E, I, O],
group_sizes [E]) -> [R, O]`: rows are sorted by expert, expert e owns the next
group_sizes[e] rows, and rows past sum(group_sizes) come out as zeros.

- "tiled" (CPU): not a ragged dot at all; `grouped_matmul.tiled_moe` runs the whole
  expert MLP tile by tile (a ragged dot on CPU is a masked dense product doing E times
  the work).
- "threaded" (CPU): `threaded.threaded_moe`, the same expert MLP run by numpy's BLAS on
  host threads of its own, one range of experts per core, through a zero-copy host
  callback. The dropless engine picks it over "tiled" on one device (or per device
  inside `jax.shard_map`) for big enough layers, never under `portable()`.
- "tokamax" (GPU/TPU, when the optional `tokamax` package imports): its Pallas
  grouped matmuls with their own backward kernels: Mosaic GPU (or Triton) on NVIDIA,
  Mosaic TPU (the megablox kernel MaxText runs) on TPU v5 and later. tokamax picks among
  them itself and falls back to XLA's ragged dot for a device, shape or dtype they
  refuse. It needs jax >= 0.11.1 and is not a dependency of this package
  (`pip install moe_jax[accelerators]`).
- "ragged_dot": `jax.lax.ragged_dot`, autodiff for the backward. XLA lowers it to a
  grouped matmul on TPU; on NVIDIA GPUs only with
  --xla_gpu_experimental_use_ragged_dot_fusion (cuDNN), otherwise jaxlib 0.10
  materialises the dense product (marin-community/marin#7012). The fallback when
  tokamax is absent.

Which of the two is faster depends on the accelerator: on GPU/TPU
benchmarks/moe_layer.py times the dropless engine with each one that is available.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib

import jax
import jax.numpy as jnp

from moe_jax.moe import threaded

IMPLEMENTATIONS = ("tiled", "threaded", "tokamax", "ragged_dot")
_PORTABLE = contextvars.ContextVar("moe_jax_portable_kernels", default=False)


@contextlib.contextmanager
def portable():
    """Trace with kernels that live entirely in the XLA program: no host callbacks, so
    the result can be serialized with `jax.export` and run elsewhere. Only traces made
    inside count: a jitted function traced before keeps its kernels, so export a
    function made for the purpose (as serve/export.py does)."""
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def is_portable() -> bool:
    return _PORTABLE.get()


def tokamax_module():
    """The tokamax package, or None where it is not installed. Imported here, at trace
    time, so that CPU users never pay for it."""
    try:
        return importlib.import_module("tokamax")
    except ImportError:
        return None


def default_implementation() -> str:
    """"tiled" on CPU (the dropless engine may upgrade it to "threaded", which depends on
    shapes); on GPU/TPU "tokamax" when it imports, else "ragged_dot"."""
    if jax.default_backend() == "cpu":
        return "tiled"
    return "tokamax" if tokamax_module() is not None else "ragged_dot"


def check_implementation(implementation: str) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}: expected one of {IMPLEMENTATIONS}")
    if implementation == "threaded" and not threaded.available():
        raise ValueError("implementation='threaded' needs jax.experimental.buffer_callback "
                         "(jax >= 0.7) and threadpoolctl; use 'tiled'")
    if implementation == "tokamax" and tokamax_module() is None:
        raise ValueError("implementation='tokamax' needs the tokamax package (jax >= 0.11.1): "
                         "pip install tokamax, or use 'ragged_dot'")
    return implementation


def ragged_dot(lhs, rhs, group_sizes, implementation: str):
    """lhs [R, I] sorted by expert, rhs [E, I, O], group_sizes [E] int32 -> [R, O] in the
    operands' dtype."""
    out_dtype = jnp.result_type(lhs, rhs)
    if implementation == "tokamax":
        return tokamax_module().ragged_dot(lhs, rhs, group_sizes, preferred_element_type=out_dtype)
    if implementation == "ragged_dot":
        return jax.lax.ragged_dot(lhs, rhs, group_sizes, preferred_element_type=out_dtype)
    raise ValueError(f"implementation={implementation!r}: expected 'tokamax' or 'ragged_dot'")
