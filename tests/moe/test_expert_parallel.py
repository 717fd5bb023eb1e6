"""Expert parallelism on 8 simulated CPU devices equals the one-device reference loop.

Every registered engine, every layout (EP only, EP + data, EP + FSDP; and EP + FSDP +
tensor for one engine), random and adversarial routing, outputs and every gradient.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from helpers import random_experts, tiny_model_config
from moe_jax.moe import dispatch, expert_parallel
from moe_jax.moe.block import MoEBlock, MoEConfig
from moe_jax.moe.router import BIAS_COLLECTION, LOAD_COLLECTION
from moe_jax.parallel.mesh import make_mesh
from moe_jax.parallel.sharding import use_mesh

# S = 32 tokens: 4 per device on every layout (tokens split over data * fsdp * expert = 8).
NUM_TOKENS, D_MODEL, NUM_EXPERTS, FFN, TOP_K = 32, 16, 8, 12, 2
LAYOUTS = {
    "ep": {"expert": 8},
    "ep_data": {"data": 2, "expert": 4},
    "ep_fsdp": {"fsdp": 2, "expert": 4},
}
# C = ceil(4 tokens * 2 / 8 experts * 4.0) = 4 slots per (device, expert): room for every
# local token even when all of them pick the same expert.
ROOMY_FACTOR = NUM_EXPERTS / TOP_K


def mesh_for(layout):
    return make_mesh({"data": 1, "fsdp": 1, "expert": 1, "tensor": 1, **LAYOUTS.get(layout, {})})


def make_problem(all_to=None, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    x = jax.random.normal(keys[0], (NUM_TOKENS, D_MODEL))
    experts = random_experts(keys[1:4], NUM_EXPERTS, D_MODEL, FFN)
    logits = jax.random.normal(keys[4], (NUM_TOKENS, NUM_EXPERTS))
    if all_to is not None:  # adversarial: every token's first choice is one expert
        logits = logits.at[:, all_to].set(100.0)
    weights, index = jax.lax.top_k(jax.nn.softmax(logits), TOP_K)
    cotangent = jax.random.normal(keys[5], (NUM_TOKENS, D_MODEL))  # not all ones: rows differ
    return x, index.astype(jnp.int32), weights, experts, cotangent


def value_and_grads(engine):
    """jit of (y, dropped, grads of <y, cotangent> w.r.t. x, combine weights, experts)."""

    def loss(x, index, weights, experts, cotangent):
        y, dropped = engine(x, index, weights, experts)
        return jnp.sum(y * cotangent), (y, dropped)

    grad = jax.value_and_grad(loss, argnums=(0, 2, 3), has_aux=True)
    return jax.jit(lambda *a: (lambda out: (out[0][1][0], out[0][1][1], out[1]))(grad(*a)))


@functools.cache
def reference_step():
    return value_and_grads(lambda *a: dispatch.reference(*a))


@functools.cache
def reference_results(all_to):
    return reference_step()(*make_problem(all_to))  # one compilation for every routing


def assert_close(got, want, atol=1e-5):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=atol, rtol=0)


@pytest.mark.parametrize("engine", sorted(dispatch.ENGINES))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_engine_and_layout_equals_reference(layout, engine):
    ep = functools.partial(expert_parallel.expert_parallel_moe, capacity_factor=ROOMY_FACTOR,
                           engine_name=engine)
    with use_mesh(mesh_for(layout)):
        step = value_and_grads(lambda x, i, w, e: ep(x, i, w, e))
        for all_to in (None, 5):  # one compilation, two routings
            y, dropped, grads = step(*make_problem(all_to))
            y_ref, _, grads_ref = reference_results(all_to)
            assert int(dropped) == 0, (layout, engine, all_to)
            assert_close(y, y_ref)
            assert_close(grads, grads_ref)


def test_tensor_parallel_experts_compose():
    # F split over tensor: partial SwiGLU outputs summed by one psum.
    mesh = make_mesh({"data": 1, "fsdp": 2, "expert": 2, "tensor": 2})
    with use_mesh(mesh):
        step = value_and_grads(lambda x, i, w, e: expert_parallel.expert_parallel_moe(
            x, i, w, e, ROOMY_FACTOR, engine_name="capacity"))
        y, dropped, grads = step(*make_problem(5))
    y_ref, _, grads_ref = reference_results(5)
    assert int(dropped) == 0
    assert_close(y, y_ref)
    assert_close(grads, grads_ref)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_capacity_reports_exactly_what_it_dropped(layout):
    # Token t picks expert 3 first and expert 4 + t % 4 second. Each device holds 4
    # consecutive tokens (4d .. 4d+3) and gives each expert C = ceil(4 * 2 / 8 * 1.0) = 1
    # slot: expert 3 gets 4 first choices and keeps the first token's, experts 4..7 get
    # one second choice each and keep it. Dropped: 3 per device * 8 devices = 24.
    x, _, _, experts, _ = make_problem()
    t = np.arange(NUM_TOKENS)
    index = jnp.asarray(np.stack([np.full(NUM_TOKENS, 3), 4 + t % 4], axis=1), jnp.int32)
    weights = jnp.asarray(np.random.default_rng(0).uniform(0.2, 1.0, (NUM_TOKENS, TOP_K)), jnp.float32)
    with use_mesh(mesh_for(layout)):
        y, dropped = jax.jit(lambda *a: expert_parallel.expert_parallel_moe(
            *a, 1.0, engine_name="capacity"))(x, index, weights, experts)
    assert int(dropped) == 24
    # What survived is computed exactly: the reference with dropped weights zeroed.
    kept = np.ones((NUM_TOKENS, TOP_K), bool)
    kept[:, 0] = t % 4 == 0
    y_ref, _ = dispatch.reference(x, index, jnp.where(kept, weights, 0.0), experts)
    assert_close(y, y_ref)


def test_block_switches_to_expert_parallel_under_an_expert_mesh():
    # The MoE block under jax.set_mesh(expert=4) runs the shard_map path and gives the
    # one-device outputs, dropped fraction and (global) expert loads for the bias rule.
    m = tiny_model_config(dispatch="capacity", capacity_factor=4.0)
    block = MoEBlock(MoEConfig.from_config(m))
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, m.d_model))
    variables = nn.unbox(block.init(jax.random.PRNGKey(1), x))
    variables[BIAS_COLLECTION]["router"]["bias"] = jax.random.normal(jax.random.PRNGKey(2), (m.num_experts,)) * 0.1
    apply = jax.jit(lambda v, x: block.apply(v, x, mutable=[LOAD_COLLECTION]))
    (y_ref, stats_ref), loads_ref = apply(variables, x)
    assert "shard_map" not in str(jax.make_jaxpr(apply)(variables, x))

    with use_mesh(mesh_for("ep_data")):
        assert "shard_map" in str(jax.make_jaxpr(apply)(variables, x))
        (y, stats), loads = apply(variables, x)
    assert_close(y, y_ref)
    assert_close(stats, stats_ref)
    assert_close(loads, loads_ref, atol=0)


def test_engine_choice_follows_the_mesh():
    assert expert_parallel.engine_for_active_mesh("capacity") is dispatch.capacity  # no mesh
    with use_mesh(make_mesh({"data": 1, "fsdp": 8, "expert": 1, "tensor": 1})):
        assert expert_parallel.engine_for_active_mesh("capacity") is dispatch.capacity
    with use_mesh(mesh_for("ep")):
        assert expert_parallel.engine_for_active_mesh("capacity") is not dispatch.capacity
    # A bare jax.set_mesh (no flax rules context) works too, with FALLBACK_RULES.
    x, index, weights, experts, _ = make_problem()
    with jax.set_mesh(mesh_for("ep_data")):
        engine = expert_parallel.engine_for_active_mesh("reference")
        y, dropped = jax.jit(lambda *a: engine(*a, None))(x, index, weights, experts)
    assert int(dropped) == 0
    assert_close(y, dispatch.reference(x, index, weights, experts)[0])


def test_ragged_exchange_lowers_for_gpu():
    # ragged_all_to_all is UNIMPLEMENTED on CPU, so the accelerator exchange can only be
    # lowered here (for CUDA, through jax.export), not run.
    x, index, weights, experts, cotangent = make_problem()

    def loss(x, weights, experts):
        y, _ = expert_parallel.expert_parallel_moe(x, index, weights, experts, engine_name="dropless",
                                                   exchange="ragged")
        return jnp.sum(y * cotangent)

    with use_mesh(mesh_for("ep")):
        exported = jax.export.export(
            jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=["cuda"],
            disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("ragged_all_to_all")],
        )(x, weights, experts)
    # Forward: x, experts, weights there and y back; backward: the transposes of all four.
    assert exported.mlir_module().count("stablehlo.custom_call @ragged_all_to_all") >= 4
