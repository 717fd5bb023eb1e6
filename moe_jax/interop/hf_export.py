"""Write our variables as a Hugging Face DeepSeek checkpoint directory.

    export_hf("out/", params, router_bias, model_config, hf_config=imported.hf_config)

writes config.json, safetensors shards of at most `max_shard_size` and, when there is
more than one shard, model.safetensors.index.json, in the layout transformers'
`DeepseekV2ForCausalLM` / `DeepseekV3ForCausalLM` load (names: `hf_names.py`). Passing
the config.json an import came from keeps its extra keys and its rope spelling, so an
imported checkpoint exports back to the same tensors, bit for bit, when written in its
original dtype. `fp8=True` writes DeepSeek-V3-style block-scaled float8 projections.

Shards are written one tensor at a time into a temporary directory beside the target,
which is renamed into place only when everything has been written: a failure leaves
nothing behind. Arrays are read through `np.asarray`, so the variables must be
addressable from this process (single-host).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np
from tqdm.auto import tqdm

from moe_jax.layers import fp8 as fp8_lib
from moe_jax.interop.hf_config import hf_config_from_model
from moe_jax.interop.hf_import import CONFIG_FILE, CheckpointMismatchError
from moe_jax.interop.hf_names import PARAMS, SCALE_SUFFIX, Slot, checkpoint_slots, leaf_shapes
from moe_jax.interop.safetensors_io import PlannedTensor, parse_size, write_checkpoint_tensors
from moe_jax.interop.staging import refuse_nonempty, staged_directory
from moe_jax.moe.router import BIAS_COLLECTION

TORCH_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def source_dtype(hf_config: dict | None) -> str | None:
    """The weight dtype a config.json names ("dtype", or "torch_dtype" before transformers 5)."""
    name = (hf_config or {}).get("dtype") or (hf_config or {}).get("torch_dtype")
    return name if name in TORCH_DTYPE_NAMES else None


def _flatten(tree, prefix=()):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        for key, value in tree.items():
            yield from _flatten(value, prefix + (str(key),))
    else:
        yield prefix, tree


def _check_variables(slots: list[Slot], variables: dict, m):
    """Raise CheckpointMismatchError naming missing/unexpected/mis-shaped leaves."""
    expected = leaf_shapes(slots)
    if m.router == "sigmoid":  # no bias variable: exported as zeros
        expected = {k: v for k, v in expected.items() if k[0] != BIAS_COLLECTION}
    present = {(collection, path): leaf for collection in (PARAMS, BIAS_COLLECTION)
               for path, leaf in _flatten(variables[collection])}
    name = lambda key: "/".join((key[0],) + key[1])
    missing = [name(k) for k in expected if k not in present]
    unexpected = [name(k) for k in present if k not in expected]
    shapes = [f"{name(k)}: variables {list(np.shape(present[k]))}, model expects {list(shape)}"
              for k, shape in expected.items() if k in present and tuple(np.shape(present[k])) != shape]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError("variables", missing, unexpected, shapes)
    return present


def planned_tensors(slots: list[Slot], host_leaf, dtype: np.dtype, quantize: bool):
    """PlannedTensors for every slot, FP8 weights followed by their `_scale_inv`."""
    planned, pending_scales = [], {}

    def produce(slot: Slot):
        if slot.collection == BIAS_COLLECTION:
            leaf = host_leaf(slot)
            return np.zeros(slot.hf_shape, np.float32) if leaf is None else \
                slot.to_hf(np.asarray(leaf[slot.index], np.float32))
        return slot.to_hf(host_leaf(slot)[slot.index])

    def produce_fp8(slot: Slot):
        q, scale = fp8_lib.quantize_weight(np.asarray(produce(slot), np.float32))
        pending_scales[slot.hf_name] = scale
        return q

    for slot in slots:
        if quantize and slot.linear:
            planned.append(PlannedTensor(slot.hf_name, fp8_lib.FP8_DTYPE, slot.hf_shape,
                                         functools.partial(produce_fp8, slot)))
            planned.append(PlannedTensor(slot.hf_name + SCALE_SUFFIX, np.dtype(np.float32),
                                         fp8_lib.scale_shape(slot.hf_shape),
                                         functools.partial(pending_scales.pop, slot.hf_name)))
        else:
            out_dtype = np.dtype(np.float32) if slot.collection == BIAS_COLLECTION else dtype
            planned.append(PlannedTensor(slot.hf_name, out_dtype, slot.hf_shape,
                                         functools.partial(produce, slot)))
    return planned


def export_hf(directory: str, params: dict, router_bias: dict, model_config, *, hf_config: dict | None = None,
              dtype: str | None = None, fp8: bool = False, max_shard_size="5GB", overwrite: bool = False,
              progress: bool = True) -> str:
    """Write a HF checkpoint directory; returns its path.

    dtype: dtype of the written weights ("bfloat16", "float32", "float16"); default the
      dtype named in `hf_config` (the imported checkpoint's), else the model's param_dtype. Router correction biases are always float32, as DeepSeek ships them.
    fp8: quantize decoder-layer projections (not the router, embeddings, head or norms)
      to float8_e4m3fn with 128x128 block scales.
    """
    m = model_config
    dtype = dtype or source_dtype(hf_config) or m.param_dtype
    if dtype not in TORCH_DTYPE_NAMES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(TORCH_DTYPE_NAMES)}")
    np_dtype = np.dtype(jax.numpy.dtype(dtype))
    cfg = hf_config_from_model(m, base=hf_config, torch_dtype=TORCH_DTYPE_NAMES[dtype], quantized=fp8)
    slots = checkpoint_slots(m, cfg["model_type"], bool(cfg.get("rope_interleave", True)))
    present = _check_variables(slots, {PARAMS: params, BIAS_COLLECTION: router_bias or {}}, m)
    refuse_nonempty(directory, overwrite)  # before the host copies below, not after them

    @functools.lru_cache(maxsize=None)
    def host(key):  # one host view per leaf (zero-copy for CPU arrays)
        return np.asarray(present[key])

    def host_leaf(slot: Slot):
        key = (slot.collection, slot.path)
        return host(key) if key in present else None

    planned = planned_tensors(slots, host_leaf, np_dtype, fp8)
    with staged_directory(directory, overwrite) as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        with tqdm(total=len(planned), desc=f"export {os.path.basename(os.path.normpath(directory))}",
                  unit="tensor", disable=not progress) as bar:
            write_checkpoint_tensors(tmp, planned, parse_size(max_shard_size), bar.update)
    return directory
