"""Writing quantised exports: a model's weights through the quantisation policy
(weights.py), in the format moe_jax.interop.quantized describes and reads.

`bits=None` writes the same layout with every leaf float: the float32 baseline the byte
ratios compare against.
"""

from __future__ import annotations

import json
import os

import numpy as np

from moe_jax.interop.checkpoint import MODEL_CONFIG_FILE
from moe_jax.interop.quantized import QUANT_FILE
from moe_jax.interop.safetensors_io import PlannedTensor, write_checkpoint_tensors
from moe_jax.interop.staging import refuse_nonempty, staged_directory
from moe_jax.layers.int_quant import QuantizedTensor
from moe_jax.quant.weights import quantize_tree

MAX_SHARD_BYTES = 5 * 10**9


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (str(k),))
    else:
        yield "/".join(prefix), tree


def _entry(leaf) -> dict:
    """How to read `leaf` back: its quantization.json entry."""
    if isinstance(leaf, QuantizedTensor):
        return {"bits": leaf.bits, "group": leaf.group, "axis": leaf.axis, "shape": list(leaf.shape)}
    return {"float": str(leaf.dtype), "shape": list(leaf.shape)}


def save_quantized(directory: str, params, router_bias, model_config, bits: int | None,
                   group_size: int = 128, overwrite: bool = False) -> dict:
    """Quantise `params` (router_bias stays float) and write the export to `directory`; returns
    {"bytes": size of model.safetensors, "quantized": leaves quantised, "float": kept}."""
    refuse_nonempty(directory, overwrite)  # before quantising, not after
    tree = {"params": quantize_tree(params, bits, group_size) if bits else _to_numpy(params),
            "router_bias": _to_numpy(router_bias or {})}
    entries, tensors = {}, []
    for name, leaf in _flatten(tree):
        entries[name] = _entry(leaf)
        parts = ([(name + ".qvalues", leaf.values), (name + ".scales", leaf.scales)]
                 if isinstance(leaf, QuantizedTensor) else [(name, leaf)])
        tensors += [PlannedTensor(n, a.dtype, a.shape, lambda a=a: a) for n, a in parts]
    with staged_directory(directory, overwrite) as tmp:
        with open(os.path.join(tmp, MODEL_CONFIG_FILE), "w") as f:
            json.dump(model_config.to_dict(), f, indent=2, sort_keys=True)
        with open(os.path.join(tmp, QUANT_FILE), "w") as f:
            json.dump({"bits": bits, "group_size": group_size, "tensors": entries}, f, indent=1,
                      sort_keys=True)
        write_checkpoint_tensors(tmp, tensors, MAX_SHARD_BYTES)
    num_quantized = sum("bits" in e for e in entries.values())
    return {"bytes": tensor_file_bytes(directory), "quantized": num_quantized,
            "float": len(entries) - num_quantized}


def _to_numpy(tree):
    return {k: _to_numpy(v) for k, v in tree.items()} if isinstance(tree, dict) else np.asarray(tree)


def tensor_file_bytes(directory: str) -> int:
    """Bytes of the safetensors file(s) of a checkpoint directory."""
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
               if f.endswith(".safetensors"))
