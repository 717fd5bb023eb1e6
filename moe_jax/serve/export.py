"""Exported artefacts: a model that runs with jax and numpy alone, without moe_jax.

    ART/
      manifest.json       shapes, token ids, the weights' order, the char vocabulary
      prefill.jax         jax.export-serialized (StableHLO) prefill
      decode.jax          jax.export-serialized decode step
      weights.npz         the weights in manifest order (int8 values + float32 scales
                          for quantised leaves with --quantized); no pickle
      generate.py         the standalone greedy loader (standalone_loader.py)

The two functions are `generate.py`'s prefill and decode step over a left-padded cache
of `context` tokens (infer/cache.py), with the weights as their first argument, a list:

    prefill(weights, tokens int32 [B, P], lengths int32 [B]) -> (logits [B, V], cache)
    decode(weights, cache, tokens int32 [B])                  -> (logits [B, V], cache)

`cache` is a list of arrays to pass back unchanged. Quantised weights are dequantised
inside both functions, exactly as `layers.int_quant.dequantize` does on load.

Batch and prompt length: `batch=None` exports B and P symbolic (any batch, any P up to
the context). The dropless dispatch sizes its expert tiles from the static token count,
so a symbolic export runs the MoE layers with the `reference` dispatch (every token
through every expert, masked by its routing weight: E/K times the expert FLOPs, the same
tokens). `batch=N, prompt_len=P` exports fixed shapes with the dropless dispatch the
in-process sampler uses.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from moe_jax.data.tokenizer import CharTokenizer
from moe_jax.infer.cache import KVCache, init_cache
from moe_jax.infer.generate import extend, inference_config, prefill
from moe_jax.layers.int_quant import QuantizedTensor, dequantize
from moe_jax.moe.ragged_kernels import portable
from moe_jax.quant.weights import quantize_tree

FORMAT_VERSION = 1
LOADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standalone_loader.py")


def _weight_list(params, router_bias, bits: int | None, group_size: int):
    """-> (names, arrays, spec): the flat weights and how to rebuild the tree from them.
    spec[name] is ("float", index) or ("int8", values index, scales index, QuantizedTensor
    fields without the arrays)."""
    tree = {"params": quantize_tree(params, bits, group_size) if bits else params,
            "router_bias": router_bias or {}}
    names, arrays, spec = [], [], {}
    for path, leaf in traverse_util.flatten_dict(tree, sep="/").items():
        if isinstance(leaf, QuantizedTensor):
            spec[path] = ("int8", len(arrays), len(arrays) + 1, leaf.group, leaf.axis, leaf.shape)
            names += [path + ".qvalues", path + ".scales"]
            arrays += [np.asarray(leaf.values), np.asarray(leaf.scales)]
        else:
            spec[path] = ("float", len(arrays))
            names.append(path)
            arrays.append(np.asarray(leaf))
    return names, arrays, spec


def _rebuild(weights, spec, dtype):
    """The flat weight list -> (params, router_bias) inside the traced function."""
    flat = {}
    for path, entry in spec.items():
        if entry[0] == "int8":
            _, v, s, group, axis, shape = entry
            flat[path] = dequantize(QuantizedTensor(weights[v], weights[s], 8, group, axis, shape),
                                    dtype, xp=jnp)
        else:
            flat[path] = weights[entry[1]]
    tree = traverse_util.unflatten_dict(flat, sep="/")
    return tree["params"], tree.get("router_bias", {})


def _functions(m, spec, context: int, dtype):
    """prefill and decode as functions of (weights list, ...), for jax.export."""
    stacks = sorted(init_cache(m, 1, 1).c_kv)

    def to_list(cache: KVCache):
        return ([cache.c_kv[k] for k in stacks] + [cache.k_rope[k] for k in stacks]
                + [cache.lengths, cache.index])

    def from_list(arrays):
        n = len(stacks)
        return KVCache(dict(zip(stacks, arrays[:n])), dict(zip(stacks, arrays[n:2 * n])),
                       arrays[2 * n], arrays[2 * n + 1])

    def prefill_fn(weights, tokens, lengths):
        params, router_bias = _rebuild(weights, spec, dtype)
        cache = init_cache(m, tokens.shape[0], context)
        logits, cache = prefill(m, params, router_bias, cache, tokens, lengths)
        return logits, to_list(cache)

    def decode_fn(weights, cache, tokens):
        params, router_bias = _rebuild(weights, spec, dtype)
        logits, cache = extend(m, params, router_bias, from_list(cache), tokens[:, None])
        return logits[:, 0], to_list(cache)

    return prefill_fn, decode_fn


def export_model(model_config, params, router_bias, tokenizer, out: str, *,
                 quantize: bool = False, context: int | None = None, batch: int | None = None,
                 prompt_len: int | None = None, platforms=("cpu",),
                 group_size: int = 128) -> dict:
    """Write ART = `out` for a model (its `config.model` section and weights); returns
    the manifest.

    The manifest carries the tokenizer's special ids and, for a character tokenizer,
    its id -> character table, so the loader can take and print text; with any other
    tokenizer the loader works in token ids.
    """
    config = ml_collections.ConfigDict(model_config.to_dict())
    fixed = batch is not None
    if not fixed:
        config.dispatch = "reference"  # see the module docstring
    m = inference_config(config) if fixed else ml_collections.FrozenConfigDict(config)
    context = int(context or m.max_seq_len)
    if fixed and not (prompt_len and 1 <= prompt_len < context):
        raise ValueError(f"prompt_len = {prompt_len}: with a fixed batch, expected a prompt "
                         f"length in [1, {context})")
    names, arrays, spec = _weight_list(params, router_bias, 8 if quantize else None, group_size)
    dtype = jnp.dtype(m.param_dtype)
    prefill_fn, decode_fn = _functions(m, spec, context, dtype)

    if fixed:
        (b, p), b_decode = (batch, prompt_len), batch
    else:  # decode gets its own symbol: a constraint on p cannot refer to a missing p there
        b, p = jax.export.symbolic_shape("b, p", constraints=(f"p <= {context}",))
        (b_decode,) = jax.export.symbolic_shape("b")
    weights = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays]
    with portable():  # no host-callback kernels: they cannot be serialized
        exported_prefill = jax.export.export(jax.jit(prefill_fn), platforms=platforms)(
            weights, jax.ShapeDtypeStruct((b, p), jnp.int32), jax.ShapeDtypeStruct((b,), jnp.int32))
        tokens = jax.ShapeDtypeStruct((b_decode,), jnp.int32)
        cache = jax.eval_shape(lambda w, t: prefill_fn(w, t[:, None], t)[1], weights, tokens)
        exported_decode = jax.export.export(jax.jit(decode_fn), platforms=platforms)(
            weights, cache, tokens)

    blobs = {"prefill": exported_prefill.serialize(), "decode": exported_decode.serialize()}
    os.makedirs(out, exist_ok=True)
    for name, blob in blobs.items():
        with open(os.path.join(out, f"{name}.jax"), "wb") as f:
            f.write(blob)
    np.savez(os.path.join(out, "weights.npz"), **{f"w{i:04d}": a for i, a in enumerate(arrays)})
    shutil.copyfile(LOADER, os.path.join(out, "generate.py"))
    chars = None
    if isinstance(tokenizer, CharTokenizer):
        chars = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    manifest = {
        "format": FORMAT_VERSION, "context": context, "vocab_size": int(m.vocab_size),
        "batch": batch, "prompt_len": prompt_len if fixed else None, "dispatch": m.dispatch,
        "platforms": list(platforms),
        "quantized": {"bits": 8, "group_size": group_size} if quantize else None,
        "weights": [{"key": f"w{i:04d}", "name": n, "dtype": str(a.dtype), "shape": list(a.shape)}
                    for i, (n, a) in enumerate(zip(names, arrays))],
        "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
        "char_vocabulary": chars,
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest
