"""Quantised exports: their on-disk format, and reading one back.

    QDIR/
      model_config.json    `config.model` as JSON, as a model directory has it (checkpoint.py)
      quantization.json    {"bits", "group_size", "tensors": {name: entry}}: how to read
                           every tensor back, an entry being {"bits", "group", "axis",
                           "shape"} for a quantised leaf and {"float": dtype, "shape"}
                           for a float one
      model.safetensors    float leaves under their name; a quantised leaf as
                           `<name>.qvalues` (int8, or uint8 with two int4 per byte) and
                           `<name>.scales` (float32), moe_jax.layers.int_quant's layout

Names are "params/..." and "router_bias/..." paths joined by "/". `bits` null is the
same layout with every leaf float: the float32 baseline the byte ratios compare against.
`moe-jax quantize` writes one (moe_jax.quant.checkpoint); readers use the one loader,
moe_jax.train.loader.load_model, which dequantises on load.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from moe_jax.interop.checkpoint import MODEL_CONFIG_FILE
from moe_jax.interop.safetensors_io import ShardReader, scan_checkpoint
from moe_jax.layers.int_quant import QuantizedTensor, dequantize_tree

QUANT_FILE = "quantization.json"


def is_quantized_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, QUANT_FILE))


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
