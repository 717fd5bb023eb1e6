"""QLoRA: the frozen base kept in NF4, adapters trained in float32 or bfloat16.

Which weights are quantised is `lora.quantize_targets`, named like the adapter targets
(by default every projection of attention, dense MLP, shared and routed experts, with
or without an adapter). The embedding,
head, norms and router stay as they are: the embedding is read by lookup rather than
`.astype`, and routing decisions are sensitive to small weight changes (QLoRA, too,
leaves the output layer unquantised).
"""

from __future__ import annotations

from flax import traverse_util

from moe_jax.lora.nf4 import quantize_nf4
from moe_jax.lora.targets import DEFAULT_TARGETS, select_kernels


def quantize_base(params, targets=DEFAULT_TARGETS, block_size: int = 64) -> dict:
    """Params tree with every selected kernel replaced by an NF4Tensor."""
    flat = dict(traverse_util.flatten_dict(params))
    for path in select_kernels(params, targets):
        flat[path] = quantize_nf4(flat[path], block_size)
    return traverse_util.unflatten_dict(flat)


def prepare_base(params, c):
    """The frozen base a LoRA config asks for: quantised when c.quantize_base."""
    return quantize_base(params, c.quantize_targets, c.block_size) if c.quantize_base else params
