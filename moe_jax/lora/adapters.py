"""Low-rank adapters kept apart from the frozen base parameters.

    base      the model's params tree, never updated (plain arrays or NF4Tensors)
    adapters  {path...: {"a": A, "b": B}} for the selected kernels only; the optimizer
              sees this tree and nothing else

`attach(base, adapters, c)` returns a params tree for `model.apply` in which each
adapted kernel is a `LoraKernel`: a pytree whose `.astype(dtype)` — the call every
projection makes on its parameter — returns W + (alpha / r) * A @ B. The modules are
not rewritten and every dispatch engine sees an ordinary weight; under the layer scan
the sum is formed one layer at a time. `merge` folds the adapters in for export.

B starts at zero, so an attached model computes exactly the base model's logits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from moe_jax.lora.nf4 import NF4Tensor
from moe_jax.lora.targets import DEFAULT_TARGETS, adapter_shapes, select_kernels
from moe_jax.models.param_roles import kernel_layout
from moe_jax.models.config import ConfigError

ADAPTER_DTYPES = ("float32", "bfloat16")


def default_lora_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.rank = 8
    c.alpha = 16.0  # the adapter's output is scaled by alpha / rank
    c.targets = list(DEFAULT_TARGETS)  # group names or regexes, see moe_jax.lora.targets
    c.dtype = "float32"  # adapter (master) dtype; bfloat16 halves adapter and gradient bytes
    c.quantize_base = False  # QLoRA: keep the frozen base in NF4
    # Which kernels QLoRA quantises: every projection, whether or not it has an adapter.
    c.quantize_targets = list(DEFAULT_TARGETS)
    c.block_size = 64  # NF4 absmax block
    return c


def validate_lora_config(c) -> None:
    if not isinstance(c.rank, int) or c.rank <= 0:
        raise ConfigError("lora.rank", c.rank, "a positive integer")
    if not isinstance(c.alpha, (int, float)) or c.alpha <= 0:
        raise ConfigError("lora.alpha", c.alpha, "a number > 0")
    if c.dtype not in ADAPTER_DTYPES:
        raise ConfigError("lora.dtype", c.dtype, f"one of {list(ADAPTER_DTYPES)}")
    if not isinstance(c.block_size, int) or c.block_size <= 0:
        raise ConfigError("lora.block_size", c.block_size, "a positive integer")


def lora_scale(c) -> float:
    return float(c.alpha) / c.rank


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoraKernel:
    """A frozen kernel plus its adapter; `base` first so the leaves start with its shape
    (flax compares the first leaf of a stored parameter with the shape it expects)."""

    base: Any  # array or NF4Tensor, [*lead, *in_shape, *out_shape]
    a: jax.Array  # [*lead, fan_in, r]
    b: jax.Array  # [*lead, r, fan_out]
    scale: float = dataclasses.field(metadata=dict(static=True), default=1.0)

    @property
    def shape(self):
        return self.base.shape

    @property
    def ndim(self):
        return len(self.base.shape)

    @property
    def dtype(self):
        return self.base.dtype

    def delta(self):
        """(alpha / r) * A @ B in float32, in the kernel's shape."""
        ab = jnp.matmul(self.a, self.b, preferred_element_type=jnp.float32)  # [*lead, in, out]
        return (self.scale * ab).reshape(self.base.shape)

    def astype(self, dtype):
        # Summed in float32 and rounded once, so a bfloat16 forward sees W + dW rounded
        # once rather than round(W) + round(dW).
        return (self.base.astype(jnp.float32) + self.delta()).astype(dtype)


def _layout(path):
    return tuple(kernel_layout(path))


def init_adapters(rng, params, c) -> dict:
    """Adapters for every kernel `c.targets` selects: A ~ U(+-1/sqrt(fan_in)), B = 0."""
    validate_lora_config(c)
    dtype = jnp.dtype(c.dtype)
    flat = {}
    for i, (path, (in_axes, out_axes)) in enumerate(sorted(select_kernels(params, c.targets).items())):
        shape = traverse_util.flatten_dict(params)[path].shape
        a_shape, b_shape = adapter_shapes(shape, in_axes, out_axes, c.rank)
        bound = 1.0 / math.sqrt(a_shape[-2])
        a = jax.random.uniform(jax.random.fold_in(rng, i), a_shape, jnp.float32, -bound, bound)
        flat[path + ("a",)] = a.astype(dtype)
        flat[path + ("b",)] = jnp.zeros(b_shape, dtype)
    return traverse_util.unflatten_dict(flat)


def _adapter_pairs(adapters) -> dict:
    """{kernel path: {"a", "b"}} from the nested adapters tree."""
    pairs = {}
    for path, leaf in traverse_util.flatten_dict(adapters).items():
        pairs.setdefault(path[:-1], {})[path[-1]] = leaf
    return pairs


def attach(base, adapters, c) -> dict:
    """Params tree for `model.apply`: adapted kernels become LoraKernels."""
    flat = dict(traverse_util.flatten_dict(base))
    scale = lora_scale(c)
    for path, pair in _adapter_pairs(adapters).items():
        if path not in flat:
            raise KeyError(f"adapter for {'/'.join(path)!r} has no base parameter")
        flat[path] = LoraKernel(flat[path], pair["a"], pair["b"], scale)
    return traverse_util.unflatten_dict(flat)


def _is_wrapped(x) -> bool:
    return isinstance(x, (LoraKernel, NF4Tensor))


def merge(base, adapters, c, dtype=None) -> dict:
    """Plain params with W + (alpha / r) A @ B folded in (and NF4 dequantised), for
    export or evaluation. dtype None keeps each array's dtype; NF4 bases become float32."""
    attached = attach(base, adapters, c) if adapters else base

    def fold(x):
        if _is_wrapped(x):
            return x.astype(dtype or x.dtype)
        return x if dtype is None else x.astype(dtype)

    return jax.tree.map(fold, attached, is_leaf=_is_wrapped)


def tree_bytes(tree) -> int:
    """Bytes of every array in a pytree (4-bit types counted at half a byte)."""
    total = 0
    for x in jax.tree.leaves(tree):
        if not hasattr(x, "dtype"):
            continue
        bits = 4 if jnp.dtype(x.dtype).name in ("uint4", "int4") else 8 * jnp.dtype(x.dtype).itemsize
        total += math.ceil(x.size * bits / 8)
    return total


def _count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree) if hasattr(x, "size"))


def trainable_report(base, adapters, opt_state=None) -> dict:
    """Trainable fraction and bytes; NF4 codes count as one parameter each."""
    base_params = sum(x.codes.size if isinstance(x, NF4Tensor) else x.size
                      for x in jax.tree.leaves(base, is_leaf=lambda x: isinstance(x, NF4Tensor)))
    adapter_params = _count(adapters)
    report = {"base_params": base_params, "adapter_params": adapter_params,
              "trainable_fraction": adapter_params / (base_params + adapter_params),
              "base_bytes": tree_bytes(base), "adapter_bytes": tree_bytes(adapters)}
    if opt_state is not None:
        report["optimizer_bytes"] = tree_bytes(opt_state)
    return report
