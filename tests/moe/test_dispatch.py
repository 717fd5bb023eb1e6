import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_experts

from moe_jax.moe import dispatch


def make_problem(seed=0, num_tokens=48, d_model=16, num_experts=8, ffn=12, top_k=2, all_to=None):
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    x = jax.random.normal(keys[0], (num_tokens, d_model))
    experts = random_experts(keys[1:4], num_experts, d_model, ffn)
    logits = jax.random.normal(keys[4], (num_tokens, num_experts))
    if all_to is not None:  # adversarial: every token's first choice is one expert
        logits = logits.at[:, all_to].set(100.0)
    weights, index = jax.lax.top_k(jax.nn.softmax(logits), top_k)
    return x, index.astype(jnp.int32), weights, experts


@pytest.mark.parametrize("all_to", [None, 3])
def test_capacity_equals_reference_when_nothing_dropped(all_to):
    x, index, weights, experts = make_problem(all_to=all_to)
    # A factor of E / K guarantees room for every assignment.
    y_ref, _ = dispatch.reference(x, index, weights, experts)
    y, dropped = jax.jit(dispatch.capacity, static_argnums=4)(x, index, weights, experts, 4.0)
    assert int(dropped) == 0
    np.testing.assert_allclose(y, y_ref, atol=1e-5)

    # A fixed random cotangent: sum(y ** 2) would weight rows by their own size.
    cotangent = jax.random.normal(jax.random.PRNGKey(7), y.shape)

    def loss(engine, *args):
        return jnp.sum(engine(*args)[0] * cotangent)

    grads_ref = jax.grad(lambda *a: loss(dispatch.reference, *a), argnums=(0, 2, 3))(x, index, weights, experts)
    grads = jax.grad(lambda *a: loss(lambda *b: dispatch.capacity(*b, 4.0), *a),
                     argnums=(0, 2, 3))(x, index, weights, experts)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)


def test_capacity_drops_exactly_the_overflow():
    # 8 tokens, K=1, all to expert 0, E=4, factor 1: C = ceil(8*1/4*1) = 2 slots.
    # Tokens 0 and 1 are kept (first come), the other 6 are dropped and output zero.
    x, _, _, experts = make_problem(num_tokens=8, num_experts=4, top_k=1)
    index = jnp.zeros((8, 1), jnp.int32)
    weights = jnp.ones((8, 1))
    y, dropped = dispatch.capacity(x, index, weights, experts, 1.0)
    assert int(dropped) == 6
    y_ref, _ = dispatch.reference(x, index, weights, experts)
    np.testing.assert_allclose(y[:2], y_ref[:2], atol=1e-5)
    np.testing.assert_array_equal(y[2:], 0.0)


def test_first_choices_win_capacity_before_second_choices():
    # 4 tokens, K=2, E=2, factor 0.5: C = ceil(4*2/2*0.5) = 2. Every token picks expert 0
    # first and expert 1 second: expert 0 keeps the first choices of tokens 0, 1 and
    # expert 1 the second choices of tokens 0, 1; 4 assignments are dropped.
    x, _, _, experts = make_problem(num_tokens=4, num_experts=2, top_k=2)
    index = jnp.array([[0, 1]] * 4, jnp.int32)
    weights = jnp.full((4, 2), 0.5)
    y, dropped = dispatch.capacity(x, index, weights, experts, 0.5)
    assert int(dropped) == 4
    y_ref, _ = dispatch.reference(x, index, weights, experts)
    np.testing.assert_allclose(y[:2], y_ref[:2], atol=1e-5)
    np.testing.assert_array_equal(y[2:], 0.0)


def test_capacity_gradients_skip_dropped_assignments():
    # Half the assignments overflow: the kept ones match the reference with the dropped
    # weights zeroed, values and gradients alike, and the dropped weights get zero gradient.
    x, index, weights, experts = make_problem(all_to=3)
    y, dropped = dispatch.capacity(x, index, weights, experts, 1.0)
    rank, _ = dispatch.rank_within_expert(index.T.reshape(-1), 8)
    kept = (rank < dispatch.expert_capacity(48, 2, 8, 1.0)).reshape(2, 48).T
    assert int(dropped) == int(jnp.sum(~kept)) > 0
    masked = jnp.where(kept, weights, 0.0)
    y_ref, _ = dispatch.reference(x, index, masked, experts)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)

    cotangent = jax.random.normal(jax.random.PRNGKey(7), y.shape)

    def loss(fn, w, e):
        return jnp.sum(fn(x, index, w, e)[0] * cotangent)

    g = jax.grad(lambda w, e: loss(lambda *a: dispatch.capacity(*a, 1.0), w, e), argnums=(0, 1))(weights, experts)
    g_ref = jax.grad(lambda w, e: loss(dispatch.reference, w, e), argnums=(0, 1))(masked, experts)
    np.testing.assert_array_equal(np.asarray(g[0])[~np.asarray(kept)], 0.0)
    np.testing.assert_allclose(np.where(kept, g[0], 0.0), np.where(kept, g_ref[0], 0.0), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g[1]), jax.tree.leaves(g_ref[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_rank_within_expert():
    rank, sizes = dispatch.rank_within_expert(jnp.array([2, 0, 2, 2, 1, 0]), 4)
    np.testing.assert_array_equal(rank, [0, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(sizes, [2, 1, 3, 0])


def test_unknown_engine_names_the_field():
    with pytest.raises(ValueError, match="model.dispatch"):
        dispatch.get_engine("magic")
