import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models.config import base_model_config
from moe_jax.moe import router as r


def config(**kw):
    m = base_model_config()
    for k, v in kw.items():
        m[k] = v
    return m


def test_softmax_topk_hand_computed():
    # softmax([1,2,3,0]) = e^x / (e + e^2 + e^3 + 1) = e^x / 31.1929
    #                    = [0.08714, 0.23688, 0.64391, 0.03206]; top-2 = experts 2, 1.
    logits = jnp.array([[1.0, 2.0, 3.0, 0.0]])
    m = config(num_experts=4, top_k=2, router="softmax", norm_topk_prob=False, routed_scaling=1.0)
    out = r.route(logits, r.RouterConfig.from_config(m))
    np.testing.assert_array_equal(out.expert_index, [[2, 1]])
    np.testing.assert_allclose(out.combine_weights, [[0.643914, 0.236883]], rtol=1e-5)
    # Renormalised: e^3 / (e^3 + e^2) = 1 / (1 + e^-1) = 0.731059, and 0.268941.
    m.norm_topk_prob = True
    np.testing.assert_allclose(r.route(logits, r.RouterConfig.from_config(m)).combine_weights, [[0.731059, 0.268941]], rtol=1e-5)


def test_sigmoid_bias_selects_with_bias_weighs_without():
    # sigmoid([0, 1, -1, 2]) = [0.5, 0.731059, 0.268941, 0.880797].
    # Selection uses s + b with b = [0, 0, 3, 0] -> [0.5, 0.73, 3.27, 0.88]: experts 2, 3.
    # Weights use s alone: [0.268941, 0.880797] / 1.149738 = [0.233915, 0.766085], x 2.5.
    logits = jnp.array([[0.0, 1.0, -1.0, 2.0]])
    m = config(num_experts=4, top_k=2, router="sigmoid_bias", routed_scaling=2.5)
    out = r.route(logits, r.RouterConfig.from_config(m), bias=jnp.array([0.0, 0.0, 3.0, 0.0]))
    np.testing.assert_array_equal(out.expert_index, [[2, 3]])
    np.testing.assert_allclose(out.combine_weights, [[0.584788, 1.915212]], rtol=1e-5)
    # Without the bias the top-2 are experts 3 and 1.
    out = r.route(logits, r.RouterConfig.from_config(m), bias=jnp.zeros(4))
    np.testing.assert_array_equal(out.expert_index, [[3, 1]])


def test_bias_changes_choice_not_weights_and_gets_no_gradient():
    key = jax.random.PRNGKey(0)
    logits = jax.random.normal(key, (64, 8))
    m = config(num_experts=8, top_k=2, router="sigmoid_bias", routed_scaling=1.0)
    small = jnp.full((8,), 1e-3)  # too small to change any choice: same weights exactly
    base = r.route(logits, r.RouterConfig.from_config(m), bias=jnp.zeros(8))
    nudged = r.route(logits, r.RouterConfig.from_config(m), bias=small)
    np.testing.assert_array_equal(base.expert_index, nudged.expert_index)
    np.testing.assert_array_equal(base.combine_weights, nudged.combine_weights)
    big = jnp.zeros(8).at[5].set(10.0)  # expert 5 is now always chosen...
    moved = r.route(logits, r.RouterConfig.from_config(m), bias=big)
    assert bool(jnp.all(jnp.any(moved.expert_index == 5, axis=1)))
    # ...but its weight is still its unbiased score, renormalised among the chosen.
    scores = jax.nn.sigmoid(logits)
    chosen = jnp.take_along_axis(scores, moved.expert_index, axis=1)
    np.testing.assert_allclose(moved.combine_weights, chosen / chosen.sum(1, keepdims=True), rtol=1e-6)
    grad = jax.grad(lambda b: r.route(logits, r.RouterConfig.from_config(m), bias=b).combine_weights.sum())(big)
    np.testing.assert_array_equal(grad, jnp.zeros(8))


@pytest.mark.parametrize("group_score, expected", [("top2_sum", [4, 2]), ("max", [0, 4])])
def test_group_limited_hand_computed(group_score, expected):
    # Groups of two: g0 = [0.9, 0.1], g1 = [0.6, 0.55], g2 = [0.7, 0.4], g3 = [0.2, 0.2].
    # top2_sum: g0 1.0, g1 1.15, g2 1.1, g3 0.4 -> keep g1, g2 -> best experts 4 (0.7), 2 (0.6).
    # max:      g0 0.9, g1 0.6,  g2 0.7, g3 0.2 -> keep g0, g2 -> best experts 0 (0.9), 4 (0.7).
    scores = jnp.array([[0.9, 0.1, 0.6, 0.55, 0.7, 0.4, 0.2, 0.2]])
    masked = r.limit_to_groups(scores, n_group=4, topk_group=2, group_score=group_score)
    np.testing.assert_array_equal(jax.lax.top_k(masked, 2)[1], [expected])


@pytest.mark.parametrize("router_name", ["softmax", "sigmoid_bias"])
@pytest.mark.parametrize("group_score", ["top2_sum", "max"])
def test_group_limited_never_leaves_chosen_groups(router_name, group_score):
    num_experts, n_group, topk_group, top_k = 32, 8, 3, 6
    m = config(num_experts=num_experts, top_k=top_k, router=router_name, n_group=n_group,
               topk_group=topk_group, group_score=group_score)
    logits = jax.random.normal(jax.random.PRNGKey(1), (512, num_experts)) * 3
    bias = jax.random.normal(jax.random.PRNGKey(2), (num_experts,)) * 0.3
    out = r.route(logits, r.RouterConfig.from_config(m), bias=bias if router_name == "sigmoid_bias" else None)
    # Recompute the allowed groups independently in numpy.
    scores = np.asarray(r.gate_scores(logits, router_name))
    selection = scores + (np.asarray(bias) if router_name == "sigmoid_bias" else 0.0)
    grouped = selection.reshape(512, n_group, -1)
    if group_score == "max":
        group_value = grouped.max(-1)
    else:
        group_value = np.sort(grouped, axis=-1)[..., -2:].sum(-1)
    allowed = np.argsort(-group_value, axis=-1)[:, :topk_group]
    chosen_groups = np.asarray(out.expert_index) // (num_experts // n_group)
    for row in range(512):
        assert set(chosen_groups[row]) <= set(allowed[row])
    assert len(np.unique(np.asarray(out.expert_index), axis=1)) >= 1
    assert all(len(set(row)) == top_k for row in np.asarray(out.expert_index))


def test_balance_losses_hand_computed():
    # S=2, E=2, K=1, both tokens pick expert 0 with scores [0.75, 0.25]:
    # f = [E/(K S) * 2, 0] = [2, 0]; P = [0.75, 0.25]; loss = 2 * 0.75 = 1.5.
    scores = jnp.array([[0.75, 0.25], [0.75, 0.25]])
    index = jnp.array([[0], [0]])
    np.testing.assert_allclose(r.balance_loss(scores, index, 1), 1.5)
    # Uniform routing gives exactly 1.
    uniform_scores = jnp.full((4, 4), 0.25)
    np.testing.assert_allclose(r.balance_loss(uniform_scores, jnp.arange(4)[:, None], 1), 1.0)
    # Sequence-wise: two sequences of two tokens. Sequence 0 is the case above (1.5);
    # sequence 1 splits tokens over both experts with scores [0.5, 0.5]: f = [1, 1],
    # P = [0.5, 0.5] -> 1.0. Mean = 1.25. (Scores already sum to one per token.)
    seq_scores = jnp.array([[0.75, 0.25], [0.75, 0.25], [0.5, 0.5], [0.5, 0.5]])
    seq_index = jnp.array([[0], [0], [0], [1]])
    np.testing.assert_allclose(r.sequence_balance_loss(seq_scores, seq_index, 1, batch=2), 1.25)
    # z-loss of logits [0, 0]: logsumexp = ln 2 = 0.693147; squared = 0.480453.
    np.testing.assert_allclose(r.router_z_loss(jnp.zeros((3, 2))), 0.480453, rtol=1e-5)


def test_update_bias_rule():
    # mean load 3: expert 0 (load 6) is overloaded -> -gamma; expert 2 (load 0) -> +gamma;
    # expert 1 (load 3) is at the mean -> sign(0) = 0, unchanged.
    bias = jnp.array([0.5, 0.5, 0.5])
    new = r.update_bias(bias, jnp.array([6.0, 3.0, 0.0]), 0.1)
    np.testing.assert_allclose(new, [0.4, 0.5, 0.6])


def test_repeated_bias_updates_balance_skewed_router():
    num_tokens, num_experts = 4096, 16
    m = config(num_experts=num_experts, top_k=2, router="sigmoid_bias")
    skew = jnp.linspace(-2.0, 2.0, num_experts)  # later experts are strongly preferred
    logits = jax.random.normal(jax.random.PRNGKey(3), (num_tokens, num_experts)) + skew

    def load_of(bias):
        return r.expert_counts(r.route(logits, r.RouterConfig.from_config(m), bias=bias).expert_index, num_experts)

    bias = jnp.zeros(num_experts)
    start = float(r.load_imbalance(load_of(bias)))
    step = jax.jit(lambda b: r.update_bias(b, load_of(b), 0.01))
    for _ in range(300):
        bias = step(bias)
    end = float(r.load_imbalance(load_of(bias)))
    assert start > 2.0, start
    assert end < 1.2, end


def test_replayed_experts_get_current_scores_as_weights():
    # The sigmoid_bias example above: scores [0.5, 0.731059, 0.268941, 0.880797], the router
    # itself picks experts 2, 3 (bias [0, 0, 3, 0]). Replaying experts 0, 1 instead:
    # weights [0.5, 0.731059] / 1.231059 = [0.406154, 0.593846], x 2.5 = [1.015386, 1.484614].
    logits = jnp.array([[0.0, 1.0, -1.0, 2.0]])
    m = r.RouterConfig.from_config(config(num_experts=4, top_k=2, router="sigmoid_bias", routed_scaling=2.5))
    bias = jnp.array([0.0, 0.0, 3.0, 0.0])
    out = r.route(logits, m, bias=bias, expert_index=jnp.array([[0, 1]]))
    np.testing.assert_array_equal(out.expert_index, [[0, 1]])
    np.testing.assert_allclose(out.combine_weights, [[1.015386, 1.484614]], rtol=1e-5)
    np.testing.assert_array_equal(out.preferred_index, [[2, 3]])  # what it would have chosen
    # Replaying its own choice changes nothing, and the router still learns through the
    # weights of replayed experts.
    free = r.route(logits, m, bias=bias)
    assert free.preferred_index is None
    same = r.route(logits, m, bias=bias, expert_index=free.expert_index)
    np.testing.assert_array_equal(same.combine_weights, free.combine_weights)
    grad = jax.grad(lambda lg: r.route(lg, m, bias, jnp.array([[0, 1]])).combine_weights[0, 0])(logits)
    assert float(jnp.abs(grad[0, :2]).sum()) > 0 and float(jnp.abs(grad[0, 2:]).sum()) == 0


def test_routing_entropy_and_same_sets_by_hand():
    # p = [0.5, 0.5]: ln 2 = 0.693147; [1, 0, ...]: 0; [0.2, 0.2, 0.6]:
    # -(2 x 0.2 ln 0.2 + 0.6 ln 0.6) = 0.643775 + 0.306495 = 0.950271 (scores need not sum to 1).
    scores = jnp.array([[0.5, 0.5, 0.0], [0.7, 0.0, 0.0], [0.1, 0.1, 0.3]])
    np.testing.assert_allclose(r.routing_entropy(scores), [0.693147, 0.0, 0.950271], atol=1e-6)
    a = jnp.array([[1, 2], [2, 1], [1, 3]])
    b = jnp.array([[2, 1], [2, 1], [1, 2]])
    np.testing.assert_array_equal(r.same_expert_sets(a, b), [True, True, False])
