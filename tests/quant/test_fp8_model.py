"""model.fp8 reaches every expert engine and the dense projections, and trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from helpers import lm_batch, random_experts, tiny_model_config
from moe_jax.models.transformer import Transformer
from moe_jax.moe import dispatch, dropless
from moe_jax.train.losses import model_loss
from moe_jax.train.losses import LossWeights

# The relative error of one FP8 GEMM is ~0.037 (test_fp8.py); a few chained GEMMs stay
# well under 0.1, while leaving FP8 off (error ~1e-7) or mis-scaling (error ~1) does not.
FP8_TOLERANCE = 0.1


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _problem(num_tokens=40, d_model=64, num_experts=4, ffn=48, top_k=2):
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    x = jax.random.normal(keys[0], (num_tokens, d_model))
    experts = random_experts(keys[1:4], num_experts, d_model, ffn)
    weights, index = jax.lax.top_k(jax.nn.softmax(jax.random.normal(keys[4], (num_tokens, num_experts))), top_k)
    cotangent = jax.random.normal(keys[5], (num_tokens, d_model))
    return x, index.astype(jnp.int32), weights, experts, cotangent


def _value_and_grads(engine, x, index, weights, experts, cotangent, **kw):
    def loss(x, weights, experts):
        y, _ = engine(x, index, weights, experts, 8.0, **kw)
        return jnp.sum(y * cotangent), y
    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(x, weights, experts)
    return y, grads


@pytest.mark.parametrize("engine", ["capacity", "dropless_tiled", "dropless_ragged"])
def test_engines_in_fp8_match_the_fp8_reference(engine):
    problem = _problem()
    fn = {"capacity": dispatch.capacity,
          "dropless_tiled": lambda *a, **k: dropless.dropless(*a, implementation="tiled", **k),
          "dropless_ragged": lambda *a, **k: dropless.dropless(*a, implementation="ragged_dot", **k)}[engine]
    y_ref, g_ref = _value_and_grads(dispatch.reference, *problem, fp8=True)
    y32, _ = _value_and_grads(dispatch.reference, *problem)
    y, grads = _value_and_grads(fn, *problem, fp8=True)
    # The forward rounds the same operands the same way: equal up to float32 sums.
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    assert 0.005 < rel(y, y32) < FP8_TOLERANCE  # and it is really rounded
    # Gradients: the same scheme, but wgrad's 128-token tiles start where each engine's
    # rows start (and ragged_dot's backward is high precision): FP8-sized differences.
    for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(g_ref)):
        assert rel(got, ref) < FP8_TOLERANCE


def _small_config(**kw):
    base = dict(d_model=64, num_layers=2, num_dense_layers=1, dense_ffn=128, num_heads=2,
                q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                v_head_dim=16, num_experts=4, expert_ffn=32, top_k=2, n_group=1, topk_group=1,
                capacity_factor=4.0)
    base.update(kw)
    return tiny_model_config(**base)


def test_model_switch_changes_logits_by_fp8_error_and_gradients_flow():
    m = _small_config()
    batch = lm_batch(jax.random.randint(jax.random.PRNGKey(0), (2, 17), 0, m.vocab_size))
    variables = nn.unbox(jax.jit(Transformer.from_config(m).init)(jax.random.PRNGKey(1), batch["inputs"]))
    m8 = _small_config(fp8=True)

    def loss_and_grads(config):
        def loss_fn(params):
            logits, extras = Transformer.from_config(config).apply({**variables, "params": params}, batch["inputs"])
            return model_loss(logits, extras, batch, LossWeights.from_config(config))[0]
        # Compiled: run op by op, the two-layer model's backward takes over a minute.
        return jax.jit(jax.value_and_grad(loss_fn))(variables["params"])

    def logits(config):
        return jax.jit(Transformer.from_config(config).apply)(variables, batch["inputs"])[0]

    logits32, logits8 = logits(m), logits(m8)
    assert 1e-3 < rel(logits8, logits32) < FP8_TOLERANCE
    (loss32, g32), (loss8, g8) = loss_and_grads(m), loss_and_grads(m8)
    assert abs(float(loss8) - float(loss32)) < 0.02 * float(loss32)
    flat32 = jax.tree_util.tree_leaves_with_path(g32)
    flat8 = dict(jax.tree_util.tree_leaves_with_path(g8))
    for path, g in flat32:
        g_fp8 = flat8[path]
        assert bool(jnp.all(jnp.isfinite(g_fp8)))
        if float(jnp.linalg.norm(g)) > 1e-6:  # every trained weight still gets its gradient
            assert rel(g_fp8, g) < 0.5, jax.tree_util.keystr(path)
