"""Read a Hugging Face DeepSeek-V2/V3 checkpoint directory into our variables.

    result = import_hf("DeepSeek-V2-Lite/")          # numpy arrays on the host
    logits, _ = Transformer.from_config(result.model_config).apply(
        {"params": result.params, "router_bias": result.router_bias}, tokens)

Everything is checked against the headers before any tensor is read: missing and
unexpected tensors and shape mismatches are reported together, by name. Tensors are
then read one at a time straight into preallocated leaves (per-expert tensors into
their slot of the stacked [L, E, D, F] array), so host memory peaks near the size of
the result plus the largest single tensor. With `shardings`, each leaf is assembled
shard by shard on its devices (see `_sharded_leaf`): the host holds one slab of the
leaf at a time, never the whole stacked array, and each process reads only the tensors
its own devices need.
FP8 tensors with `<name>_scale_inv` are dequantized block by block to `param_dtype`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from moe_jax.interop.hf_names import SCALE_SUFFIX
from moe_jax.layers import fp8
from moe_jax.interop.hf_config import HFLayout, model_config_from_hf
from moe_jax.interop.hf_names import PARAMS, Slot, checkpoint_slots, leaf_shapes, mtp_layer_index
from moe_jax.interop.safetensors_io import ShardReader, TensorInfo, scan_checkpoint
from moe_jax.moe.router import BIAS_COLLECTION

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"
_MAX_LISTED = 40


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match what its config (or our model) implies."""

    def __init__(self, directory: str, missing=(), unexpected=(), shapes=(), other=()):
        self.missing, self.unexpected, self.shapes = sorted(missing), sorted(unexpected), list(shapes)
        lines = [f"{directory}: checkpoint does not match the model"]
        for title, items in (("missing tensors", self.missing), ("unexpected tensors", self.unexpected),
                             ("shape mismatches", self.shapes), ("problems", list(other))):
            if items:
                shown = items[:_MAX_LISTED]
                more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
                lines.append(f"  {title} ({len(items)}):\n    " + "\n    ".join(shown) + more)
        super().__init__("\n".join(lines))


class HFImport(NamedTuple):
    params: dict  # our "params" collection (numpy arrays, or jax arrays with shardings)
    router_bias: dict  # our "router_bias" collection (V3's e_score_correction_bias)
    model_config: ml_collections.ConfigDict  # config.model
    hf_config: dict  # the original config.json, for a faithful export


def read_hf_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}; is this a Hugging Face checkpoint directory?")
    with open(path) as f:
        return json.load(f)


def _decide_mtp(m, layout: HFLayout, tensors: dict, include_mtp: bool | None) -> set[str]:
    """Set m.mtp_depth; return the names of MTP tensors to ignore.

    transformers does not save MTP layers although V3 configs declare one, so with
    include_mtp=None a checkpoint without any MTP tensor imports without MTP.
    """
    mtp_names = {n for n in tensors if mtp_layer_index(n, m.num_layers) is not None}
    if include_mtp is False:
        m.mtp_depth = 0
        return mtp_names
    if include_mtp is None and not mtp_names:
        if layout.mtp_layers:
            log.info("config declares %d MTP layer(s) but the checkpoint holds none: importing "
                     "without MTP", layout.mtp_layers)
        m.mtp_depth = 0
    else:
        m.mtp_depth = layout.mtp_layers
    return set()


def check_tensors(directory: str, slots: list[Slot], tensors: dict[str, TensorInfo], ignored=frozenset(),
                  block=(fp8.BLOCK, fp8.BLOCK)):
    """Raise CheckpointMismatchError listing every missing/unexpected/mis-shaped tensor."""
    expected = {s.hf_name: s for s in slots}
    missing, shapes, other = [], [], []
    for name, slot in expected.items():
        info = tensors.get(name)
        if info is None:
            missing.append(name)
            continue
        if info.shape != slot.hf_shape:
            shapes.append(f"{name}: checkpoint {list(info.shape)}, model expects {list(slot.hf_shape)}")
        scale = tensors.get(name + SCALE_SUFFIX)
        if info.dtype.startswith("F8") and scale is None:
            missing.append(name + SCALE_SUFFIX)
        if scale is not None and len(slot.hf_shape) == 2:
            want = fp8.scale_shape(slot.hf_shape, block)
            if scale.shape != want:
                shapes.append(f"{name + SCALE_SUFFIX}: checkpoint {list(scale.shape)}, expected {list(want)}")
        if scale is not None and not info.dtype.startswith("F8"):
            other.append(f"{name}: has {SCALE_SUFFIX} but is stored as {info.dtype}, not float8")
    unexpected = [n for n in tensors if n not in expected and n not in ignored
                  and not (n.endswith(SCALE_SUFFIX) and n[: -len(SCALE_SUFFIX)] in expected)]
    if missing or unexpected or shapes or other:
        raise CheckpointMismatchError(directory, missing, unexpected, shapes, other)


def _read_hf_value(reader: ShardReader, tensors: dict, slot: Slot, dtype, block) -> np.ndarray:
    info = tensors[slot.hf_name]
    value = reader.read(info)
    scale = tensors.get(slot.hf_name + SCALE_SUFFIX)
    if scale is not None:
        value = fp8.dequantize_weight(value, reader.read(scale), dtype, block)
    return value


def _sharding_for(shardings, collection: str, path: tuple[str, ...]):
    if shardings is None or isinstance(shardings, jax.sharding.Sharding):
        return shardings
    node = shardings[collection]
    for key in path:
        node = node[key]
    return node


def _set(tree: dict, path: tuple[str, ...], value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _fill(slab: np.ndarray, slots: list[Slot], lead_start: tuple[int, ...], read) -> None:
    """Write every slot whose leading index falls in the slab (slab[0] is leaf[lead_start])."""
    for slot in slots:
        offset = tuple(i - s for i, s in zip(slot.index, lead_start))
        if all(0 <= o < n for o, n in zip(offset, slab.shape)):
            slab[offset] = slot.to_ours(read(slot))  # casts to the slab's dtype in the copy


def _sharded_leaf(shape, dtype, sharding, slots: list[Slot], read) -> jax.Array:
    """Build a leaf directly as per-device shards.

    Devices are grouped by the range of the stacked (layer, expert) axes they hold; each
    group's slab is filled from exactly the tensors in that range (each read once), its
    per-device pieces are put on their devices, and it is dropped before the next group.
    Host memory is one slab (1/n of the leaf when the expert axis is split n ways), and
    each process reads only what its own devices hold.
    """
    lead = len(slots[0].index)
    groups: dict[tuple, list] = {}
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        bounds = tuple(sl.indices(n)[:2] for sl, n in zip(index, shape))
        groups.setdefault(bounds[:lead], []).append((device, bounds[lead:]))
    pieces = []
    for lead_bounds, members in groups.items():
        slab = np.empty(tuple(b - a for a, b in lead_bounds) + tuple(shape[lead:]), dtype)
        _fill(slab, slots, tuple(a for a, _ in lead_bounds), read)
        for device, inner in members:
            piece = slab[(slice(None),) * lead + tuple(slice(a, b) for a, b in inner)]
            pieces.append(jax.device_put(piece, device))
        jax.block_until_ready(pieces)
        del slab
    return jax.make_array_from_single_device_arrays(shape, sharding, pieces)


def import_hf(directory: str, *, param_dtype: str = "float32", dtype: str | None = None,
              shardings: Any = None, include_mtp: bool | None = None, progress: bool = True) -> HFImport:
    """Load a HF DeepSeek-V2/V2-Lite/V3 checkpoint directory.

    param_dtype: dtype of the returned weights (FP8 weights are dequantized to it);
      dtype: the model's compute dtype (default: param_dtype).
    shardings: None (host numpy arrays), one jax Sharding for every leaf, or a tree
      {"params": ..., "router_bias": ...} of Shardings with the result's structure.
    include_mtp: None imports MTP layers when the checkpoint has them; False ignores them.
    """
    hf_config = read_hf_config(directory)
    m, layout = model_config_from_hf(hf_config, param_dtype=param_dtype, dtype=dtype)
    tensors = scan_checkpoint(directory)
    ignored = _decide_mtp(m, layout, tensors, include_mtp)
    slots = checkpoint_slots(m, layout.model_type, layout.rope_interleaved)
    block = layout.fp8_block or (fp8.BLOCK, fp8.BLOCK)
    check_tensors(directory, slots, tensors, ignored, block)

    np_dtype = np.dtype(jax.numpy.dtype(param_dtype))
    by_leaf: dict[tuple, list[Slot]] = {}
    for slot in slots:
        by_leaf.setdefault((slot.collection, slot.path), []).append(slot)
    out = {PARAMS: {}, BIAS_COLLECTION: {}}
    duplicates = [s for s in slots if s.duplicate]
    bar = tqdm(total=len(slots), desc=f"import {os.path.basename(os.path.normpath(directory))}",
               unit="tensor", disable=not progress)
    with ShardReader() as reader:
        def read(slot):
            value = _read_hf_value(reader, tensors, slot, np_dtype, block)
            bar.update()
            return value

        for (collection, path), shape in leaf_shapes(slots).items():
            dtype = np.dtype(np.float32) if collection == BIAS_COLLECTION else np_dtype
            leaf_slots = [s for s in by_leaf[(collection, path)] if not s.duplicate]
            sharding = _sharding_for(shardings, collection, path)
            if sharding is None:
                leaf = np.empty(shape, dtype)
                _fill(leaf, leaf_slots, (0,) * len(leaf_slots[0].index), read)
            else:
                leaf = _sharded_leaf(shape, dtype, sharding, leaf_slots, read)
            _set(out[collection], path, leaf)
            del leaf
        for slot in duplicates:
            copy = slot.to_ours(read(slot))
            if not np.array_equal(copy, np.asarray(_get(out[slot.collection], slot.path))):
                log.warning("%s differs from the main model's copy; our MTP shares the main one",
                            slot.hf_name)
    bar.close()
    return HFImport(out[PARAMS], out[BIAS_COLLECTION], m, hf_config)
