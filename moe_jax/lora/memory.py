"""Memory of a QLoRA fine-tune on one device, from abstract shapes (nothing allocated).

    moe-jax plan --config configs/deepseek_v2_lite.py --qlora --lora-rank 16

Accounting (bytes; "compute" = model.dtype, bfloat16 for the published presets).
Held for the whole step:

    frozen base     `lora.quantize_targets` kernels in NF4: half a byte per weight +
                    float32 absmax per block (moe_jax.lora.nf4.nf4_bytes); the rest
                    (embedding, head, norms, router) in the compute dtype
    adapters        A and B per `lora.targets` kernel (rank r), in the adapter dtype
    adapter grads   the same bytes again
    Adam moments    two float32 moments per adapter parameter; the base has none
    saved inputs    full remat under the layer scan keeps each layer's input:
                    num_layers x B*T*D compute

plus the larger of two phases that are never alive together:

    loss            3 float32 [B,T,V]: logits, log-softmax, their cotangent
    one layer       the backward of one (recomputed) layer: attention scores (4 float32
                    [B,H,T,T]: logits, probs and their cotangents), token-sized tensors
                    (2 x B*T*(6D + H*(2(N+R) + 2V) + L) compute), routed-expert buffers
                    (2 x E*C slots x (2D + 3F) compute, C the capacity), the layer's
                    kernels dequantised with the adapters folded in, their cotangents
                    (same bytes), and the largest kernel's float32 A@B

It is an estimate of the peak, not a measurement: XLA may fuse some one-layer terms
away (lowering it) and allocator fragmentation adds to it.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util

from moe_jax.lora.adapters import default_lora_config, validate_lora_config
from moe_jax.lora.nf4 import nf4_bytes
from moe_jax.lora.targets import adapter_shapes, select_kernels
from moe_jax.models.config import ConfigError
from moe_jax.moe.dispatch import expert_capacity
from moe_jax.models.transformer import Transformer

GIB = 2**30
GB = 10**9
MOMENT_BYTES = 2 * 4
# The published-recipe default: adapters on attention, dense MLP and shared experts. Per-
# expert adapters on 64 routed experts multiply the adapter count ~20x (see the plan's note).
PLAN_TARGETS = ("attention", "dense_mlp", "shared_experts")


def _layers_in(path, m) -> int:
    """How many layers a scanned parameter stacks on its leading axis (1 if unscanned)."""
    if m.scan_layers and path[0] == "dense_layers":
        return m.num_dense_layers
    if m.scan_layers and path[0] == "moe_layers":
        return m.num_layers - m.num_dense_layers
    return 1


def _abstract_params(m) -> dict:
    from moe_jax.parallel.sharding import abstract_boxed_params

    return traverse_util.flatten_dict(nn.unbox(abstract_boxed_params(Transformer.from_config(m))))


def _adapter_count(params: dict, targets, rank: int) -> int:
    tree = traverse_util.unflatten_dict(params)
    count = 0
    for path, (in_axes, out_axes) in select_kernels(tree, targets).items():
        a, b = adapter_shapes(params[path].shape, in_axes, out_axes, rank)
        count += math.prod(a) + math.prod(b)
    return count


def qlora_memory_plan(model_config, lora_config=None, *, batch_size: int = 1,
                      seq_len: int = 2048, adapter_dtype: str = "bfloat16") -> dict:
    """-> {"per_device": {item: bytes, ..., "total"}, "phases", "adapter_params",
    "trainable_fraction", the settings}. See the module docstring for each item."""
    m = model_config
    c = (lora_config or default_lora_config()).copy_and_resolve_references()
    c.dtype = adapter_dtype
    validate_lora_config(c)
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(name, value, "a positive integer")
    if m.remat_policy != "full":
        raise ConfigError("model.remat_policy", m.remat_policy,
                          "'full' for the QLoRA plan (the activation estimate assumes it)")
    compute = jnp.dtype(m.dtype).itemsize
    params = _abstract_params(m)
    quantised = select_kernels(traverse_util.unflatten_dict(params), c.quantize_targets)

    base_bytes = base_params = largest_kernel = 0
    per_layer: dict[str, int] = {}  # kernel elements of one layer, per stack
    for path, leaf in params.items():
        n = math.prod(leaf.shape)
        base_params += n
        if path not in quantised:
            base_bytes += n * compute
            continue
        base_bytes += nf4_bytes(leaf.shape, c.block_size)
        one_layer = n // _layers_in(path, m)
        per_layer[path[0]] = per_layer.get(path[0], 0) + one_layer
        largest_kernel = max(largest_kernel, one_layer)
    adapter_params = _adapter_count(params, c.targets, c.rank)

    b, t, d, h = batch_size, seq_len, m.d_model, m.num_heads
    token_width = (6 * d + h * (2 * (m.qk_nope_head_dim + m.qk_rope_head_dim) + 2 * m.v_head_dim)
                   + m.kv_lora_rank)
    expert_slots = m.num_experts * expert_capacity(b * t, m.top_k, m.num_experts, m.capacity_factor) if m.num_layers > m.num_dense_layers else 0
    one_layer = {
        "attention_scores": 4 * b * h * t * t * 4,
        "token_tensors": 2 * b * t * token_width * compute,
        "expert_buffers": 2 * expert_slots * (2 * d + 3 * m.expert_ffn) * compute,
        "layer_weights": 2 * max(per_layer.values(), default=0) * compute + largest_kernel * 4,
    }
    phases = {"loss": 3 * b * t * m.vocab_size * 4, "one_layer": sum(one_layer.values())}
    adapter_item = jnp.dtype(c.dtype).itemsize
    per_device = {
        "base": base_bytes,
        "adapters": adapter_params * adapter_item,
        "adapter_grads": adapter_params * adapter_item,
        "adam_moments": adapter_params * MOMENT_BYTES,
        "saved_layer_inputs": m.num_layers * b * t * d * compute,
        "peak_phase": max(phases.values()),
    }
    per_device["total"] = sum(per_device.values())
    return {
        "rank": c.rank, "targets": list(c.targets), "block_size": c.block_size,
        "batch_size": b, "seq_len": t, "adapter_dtype": c.dtype, "compute_dtype": m.dtype,
        "base_params": base_params,
        "quantised_params": sum(math.prod(params[p].shape) for p in quantised),
        "adapter_params": adapter_params,
        "trainable_fraction": adapter_params / (base_params + adapter_params),
        "phases": phases, "one_layer": one_layer, "per_device": per_device,
    }


def format_qlora_plan(plan: dict, title: str = "") -> str:
    gib = lambda n: f"{n / GIB:8.2f} GiB"  # noqa: E731
    p, ph, one = plan["per_device"], plan["phases"], plan["one_layer"]
    return "\n".join([
        f"{title}QLoRA on one device: NF4 base (block {plan['block_size']}), rank {plan['rank']} "
        f"{plan['adapter_dtype']} adapters on {', '.join(plan['targets'])}; batch "
        f"{plan['batch_size']} x {plan['seq_len']} tokens, full remat, compute {plan['compute_dtype']}",
        f"  parameters: {plan['base_params'] / 1e9:.2f}B frozen ({plan['quantised_params'] / 1e9:.2f}B "
        f"in NF4), {plan['adapter_params'] / 1e6:.1f}M trainable ({plan['trainable_fraction']:.3%})",
        f"    frozen base         {gib(p['base'])}",
        f"    adapters            {gib(p['adapters'])}",
        f"    adapter gradients   {gib(p['adapter_grads'])}",
        f"    Adam moments        {gib(p['adam_moments'])}  (float32, adapters only)",
        f"    saved layer inputs  {gib(p['saved_layer_inputs'])}",
        f"    peak phase          {gib(p['peak_phase'])}  (loss {ph['loss'] / GIB:.2f}; one layer "
        f"{ph['one_layer'] / GIB:.2f} = attention {one['attention_scores'] / GIB:.2f} + weights "
        f"{one['layer_weights'] / GIB:.2f} + other "
        f"{(one['token_tensors'] + one['expert_buffers']) / GIB:.2f})",
        f"    total               {gib(p['total'])}  ({p['total'] / GB:.2f} GB)",
    ])


def unplanned_expert_note(model_config, lora, plan) -> str | None:
    """What per-expert adapters on the routed experts would add, when the plan has none."""
    if "routed_experts" in lora.targets:
        return None
    targets = list(lora.targets) + ["routed_experts"]
    extra = _adapter_count(_abstract_params(model_config), targets, lora.rank) - plan["adapter_params"]
    return (f"  (per-expert adapters on the routed experts too would add {extra / 1e6:.0f}M "
            f"parameters and {extra * (2 * 2 + MOMENT_BYTES) / GIB:.2f} GiB: "
            f"--lora-targets {','.join(targets)})")
