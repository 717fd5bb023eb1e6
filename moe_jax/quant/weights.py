"""Which weights of a model are quantised to int8 / int4, and along which axis.

The numerics (group-wise symmetric scales, int4 packing, QuantizedTensor) are
moe_jax.layers.int_quant's; this is the policy that needs the model's parameter roles
(moe_jax.models.param_roles.input_axis). A weight is grouped along its input
(contracted) axis: every output channel gets its own scales, and a group never mixes
inputs of different rows of the activation. Quantised: the matmul kernels of attention,
the dense and shared MLPs, the stacked experts, the MTP projection, the head (each along
its last input axis), and the embedding table (grouped along D: a looked-up row is
dequantised alone). Norm scales, the router (its logits pick experts: a flipped top-k
costs more than the bytes are worth) and the balancing bias stay float.
"""

from __future__ import annotations

import numpy as np

from moe_jax.layers.int_quant import quantize
from moe_jax.models.param_roles import input_axis


def group_axis(path: tuple[str, ...], ndim: int) -> int | None:
    """The axis to group along for the leaf at `path` (names), or None to keep it float."""
    return input_axis(path, ndim)


def quantize_tree(tree, bits: int, group_size: int = 128):
    """A nested dict of arrays -> the same dict with the leaves `group_axis` selects
    replaced by QuantizedTensor; the others kept as float numpy arrays."""

    def walk(node, path):
        if isinstance(node, dict) or hasattr(node, "items"):
            return {k: walk(v, path + (str(k),)) for k, v in node.items()}
        array = np.asarray(node)
        axis = group_axis(path, array.ndim)
        return array if axis is None else quantize(array, bits, group_size, axis)

    return walk(tree, ())
