import jax
import numpy as np
import pytest
from flax import linen as nn

from helpers import tiny_model_config
from moe_jax.layers.mlp import swiglu
from moe_jax.moe import dispatch
from moe_jax.moe.block import MoEBlock, MoEConfig
from moe_jax.moe.router import BIAS_COLLECTION, RouterConfig, route


@pytest.mark.parametrize("engine", ["reference", "capacity"])
def test_block_is_shared_plus_routed(engine):
    m = tiny_model_config(dispatch=engine, capacity_factor=16.0)
    block = MoEBlock(MoEConfig.from_config(m))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, m.d_model))
    variables = nn.unbox(block.init(jax.random.PRNGKey(1), x))
    bias = jax.random.normal(jax.random.PRNGKey(2), (m.num_experts,)) * 0.1
    variables[BIAS_COLLECTION]["router"]["bias"] = bias
    y, stats = block.apply(variables, x)

    p = variables["params"]
    tokens = x.reshape(-1, m.d_model)
    routing = route(tokens @ p["router"]["gate"], RouterConfig.from_config(m), bias)
    experts = dispatch.ExpertWeights(p["wi_gate"], p["wi_up"], p["wo"])
    routed, _ = dispatch.reference(tokens, routing.expert_index, routing.combine_weights, experts)
    shared = swiglu(tokens, p["shared"]["gate"], p["shared"]["up"], p["shared"]["down"])
    np.testing.assert_allclose(y.reshape(-1, m.d_model), routed + shared, atol=1e-5)
    np.testing.assert_allclose(stats["expert_load"].sum(), 1.0, rtol=1e-6)
    assert float(stats["dropped_fraction"]) == 0.0


def test_block_reports_dropped_fraction():
    m = tiny_model_config(dispatch="capacity", capacity_factor=0.25)
    block = MoEBlock(MoEConfig.from_config(m))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, m.d_model))
    variables = block.init(jax.random.PRNGKey(1), x)
    _, stats = block.apply(variables, x)
    # C = ceil(32 * 4 / 16 * 0.25) = 2 slots per expert: at most 32 of 128 assignments fit.
    assert float(stats["dropped_fraction"]) >= 1 - 32 / 128


def test_block_runs_replayed_experts_with_current_weights():
    m = tiny_model_config(dispatch="dropless")
    block = MoEBlock(MoEConfig.from_config(m))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, m.d_model))
    variables = nn.unbox(block.init(jax.random.PRNGKey(1), x))
    y, stats = block.apply(variables, x)
    # Its own choice replayed: bit-identical.
    same, same_stats = block.apply(variables, x, stats["expert_index"])
    np.testing.assert_array_equal(same, y)
    np.testing.assert_array_equal(same_stats["preferred_index"], stats["expert_index"])
    # Other experts (the next K experts, cyclically): the reference dispatch of exactly
    # those, weighted by their current scores; the router's own choice is still reported.
    other = (stats["expert_index"] + m.top_k) % m.num_experts
    replayed, replayed_stats = block.apply(variables, x, other)
    np.testing.assert_array_equal(replayed_stats["expert_index"], other)
    np.testing.assert_array_equal(replayed_stats["preferred_index"], stats["expert_index"])
    p = variables["params"]
    tokens = x.reshape(-1, m.d_model)
    routing = route(tokens @ p["router"]["gate"], RouterConfig.from_config(m),
                    variables[BIAS_COLLECTION]["router"]["bias"], other.reshape(-1, m.top_k))
    experts = dispatch.ExpertWeights(p["wi_gate"], p["wi_up"], p["wo"])
    routed, _ = dispatch.reference(tokens, routing.expert_index, routing.combine_weights, experts)
    shared = swiglu(tokens, p["shared"]["gate"], p["shared"]["up"], p["shared"]["down"])
    np.testing.assert_allclose(replayed.reshape(-1, m.d_model), routed + shared, atol=1e-5)
    assert not np.allclose(replayed, y, atol=1e-3)
