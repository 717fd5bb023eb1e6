"""ONNX for the forward pass: which ways of running the model jax2onnx converts, checked
with onnxruntime against JAX.

Needs `pip install jax2onnx onnxruntime`, which is not an extra of this project: jax2onnx
0.17 pins orbax-checkpoint < 0.11.37 (install it with --no-deps next to its other
dependencies, or in a separate environment). The model is configs/tiny.py with random
weights; the prompt batch is [2, 16]. Variants:

  train_forward             Transformer.__call__ (layers under flax nn.scan), dropless
  prefill_dropless          the decoding path's prefill (forward_with_cache), dropless
  prefill_reference         the same with the reference dispatch
  prefill_reference_dce     the same, its jaxpr pruned of unused equations first (the
                            router's load statistics) before conversion

Prints ONE JSON line: per variant "ok" with the largest |logit difference| and whether
the argmax agrees, or the error and the moe_jax line it came from; for a converted
variant, onnxruntime's time per call over JAX's (jitted), medians of 5.

    python benchmarks/onnx_forward.py
"""

from __future__ import annotations

import json
import statistics
import time
import traceback

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn
from jax._src import core
from jax._src.interpreters import partial_eval as pe

from moe_jax.config import load_config
from moe_jax.models.transformer import Transformer, forward_with_cache, layer_stacks

BATCH, LENGTH = 2, 16


def model_fns(m, params, router_bias):
    def train_forward(tokens):
        return Transformer.from_config(m).apply({"params": params, "router_bias": router_bias},
                                                tokens)[0]

    def prefill(tokens):
        b, t = tokens.shape
        caches = {name: (jnp.zeros((n, b, t, m.kv_lora_rank)), jnp.zeros((n, b, t, m.qk_rope_head_dim)))
                  for name, _, n in layer_stacks(m)}
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        return forward_with_cache(m, params, router_bias, tokens, positions, jnp.ones((b, t), jnp.int32),
                                  caches, jnp.zeros((), jnp.int32), jnp.ones((b, t), bool),
                                  prefill=True)[0]

    return train_forward, prefill


def pruned(fn, example):
    """fn evaluated from its jaxpr with the equations no output needs removed."""
    closed = jax.make_jaxpr(fn)(example)
    jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    return lambda tokens: core.eval_jaxpr(jaxpr, closed.consts, tokens)[0]


def median_time(fn, runs=5):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def convert(fn, tokens):
    import jax2onnx
    import onnxruntime as ort

    expected = np.asarray(jax.jit(fn)(tokens))
    try:
        proto = jax2onnx.to_onnx(fn, [jax.ShapeDtypeStruct(tokens.shape, jnp.int32)])
        session = ort.InferenceSession(proto.SerializeToString())
        feed = {session.get_inputs()[0].name: tokens}
        got = session.run(None, feed)[0]
    except Exception as e:  # the failure is the finding
        ours = [f for f in traceback.extract_tb(e.__traceback__) if "/moe_jax/" in f.filename]
        where = f"{ours[-1].filename.split('/moe_jax/')[-1]}:{ours[-1].lineno}" if ours else None
        return {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                "moe_jax_line": where}
    jitted = jax.jit(fn)
    return {"status": "ok", "max_abs_diff": float(np.abs(got - expected).max()),
            "argmax_equal": bool((got.argmax(-1) == expected.argmax(-1)).all()),
            "onnxruntime_over_jax_time": round(
                median_time(lambda: session.run(None, feed))
                / median_time(lambda: jitted(tokens).block_until_ready()), 2)}


def main():
    base = load_config("configs/tiny.py").model
    base.mtp_depth = 0
    variables = nn.unbox(jax.jit(Transformer.from_config(base).init)(jax.random.PRNGKey(0),
                                                                      jnp.zeros((1, 4), jnp.int32)))
    params, router_bias = variables["params"], variables["router_bias"]
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (BATCH, LENGTH), 3, 99), np.int32)
    results = {}
    for dispatch in ("dropless", "reference"):
        config = ml_collections.ConfigDict(base.to_dict())
        config.dispatch = dispatch
        train_forward, prefill = model_fns(ml_collections.FrozenConfigDict(config), params, router_bias)
        if dispatch == "dropless":
            results["train_forward"] = convert(train_forward, tokens)
        results[f"prefill_{dispatch}"] = convert(prefill, tokens)
        if dispatch == "reference":
            results["prefill_reference_dce"] = convert(pruned(prefill, tokens), tokens)
    print(json.dumps({"batch": BATCH, "length": LENGTH, "jax": jax.__version__, **results}))


if __name__ == "__main__":
    main()
