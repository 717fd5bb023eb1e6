"""Quantised checkpoints: one safetensors file plus two JSON files.

    QDIR/
      model_config.json    `config.model` as JSON, as `moe-jax convert` writes it
      quantization.json    {"bits", "group_size", "tensors": {name: entry}}: how to read
                           every tensor back (see `_entry`)
      model.safetensors    float leaves under their name; a quantised leaf as
                           `<name>.qvalues` (int8, or uint8 with two int4 per byte) and
                           `<name>.scales` (float32)

Names are "params/..." and "router_bias/..." paths joined by "/". `bits=None` writes the
same layout with every leaf float: the float32 baseline the byte ratios compare against.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from moe_jax.interop.staging import refuse_nonempty, staged_directory
from moe_jax.interop.safetensors_io import (PlannedTensor, ShardReader, scan_checkpoint,
                                            write_checkpoint_tensors)
from moe_jax.quant.weights import QuantizedTensor, dequantize_tree, quantize_tree

MODEL_CONFIG_FILE = "model_config.json"
QUANT_FILE = "quantization.json"
MAX_SHARD_BYTES = 5 * 10**9


def is_quantized_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, QUANT_FILE))


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (str(k),))
    else:
        yield "/".join(prefix), tree


def _entry(leaf) -> dict:
    if isinstance(leaf, QuantizedTensor):
        return {"bits": leaf.bits, "group": leaf.group, "axis": leaf.axis, "shape": list(leaf.shape)}
    return {"float": str(leaf.dtype), "shape": list(leaf.shape)}


def save_quantized(directory: str, params, router_bias, model_config, bits: int | None,
                   group_size: int = 128, overwrite: bool = False) -> dict:
    """Quantise `params` (router_bias stays float) and write QDIR; returns
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


def _unflatten(flat: dict) -> dict:
    tree = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def load_quantized(directory: str, dtype=None):
    """-> (params dequantised to `dtype` (default: the model's param_dtype), router_bias,
    model_config, quantization info {"bits", "group_size"})."""
    with open(os.path.join(directory, MODEL_CONFIG_FILE)) as f:
        model_config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(directory, QUANT_FILE)) as f:
        info = json.load(f)
    tensors = scan_checkpoint(directory)
    flat = {}
    with ShardReader() as reader:
        for name, e in info["tensors"].items():
            if "bits" in e:
                missing = [n for n in (name + ".qvalues", name + ".scales") if n not in tensors]
                if missing:
                    raise ValueError(f"{directory}: quantised tensor {name} lacks {missing}")
                flat[name] = QuantizedTensor(reader.read(tensors[name + ".qvalues"]),
                                             reader.read(tensors[name + ".scales"]), e["bits"],
                                             e["group"], e["axis"], tuple(e["shape"]))
            else:
                flat[name] = reader.read(tensors[name])
    tree = _unflatten(flat)
    dtype = np.dtype(dtype or model_config.get("param_dtype", "float32"))
    params = dequantize_tree(tree.get("params", {}), dtype)
    router_bias = dequantize_tree(tree.get("router_bias", {}), np.float32)
    return params, router_bias, model_config, {"bits": info["bits"], "group_size": info["group_size"]}
