"""GRPO pieces against values worked out by hand, and a bandit that GRPO must solve."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moe_jax.rl.grpo import (GRPOConfig, aggregate, group_advantages, group_is_informative,
                             grpo_loss, k3_kl, policy_ratio, sequence_ratio)


def test_group_advantages_by_hand():
    rewards = [1, 0, 0, 0, 2, 2, 2, 2]  # two groups of G=4
    # Group 1: mean 0.25; deviations 0.75, -0.25 x3; population std
    # sqrt((0.5625 + 3 * 0.0625) / 4) = sqrt(0.1875) = 0.4330, so A = sqrt(3), -1/sqrt(3).
    # Group 2: all equal, A = 0 (and the group carries no signal).
    a = group_advantages(rewards, 4, eps=0.0)
    s3 = math.sqrt(3)
    np.testing.assert_allclose(a[:4], [s3, -1 / s3, -1 / s3, -1 / s3], rtol=1e-6)
    np.testing.assert_allclose(a[4:], 0.0, atol=0)
    # Dr. GRPO: centred only.
    np.testing.assert_allclose(group_advantages(rewards, 4, scale_by_std=False),
                               [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(group_is_informative(rewards, 4), [True, False])


def test_k3_kl_and_ratio_by_hand():
    logp = jnp.log(jnp.array([0.5, 0.5, 0.5]))
    ref = jnp.log(jnp.array([0.5, 0.25, 1.0]))
    # pi_ref/pi = 1, 0.5, 2:  1 - 0 - 1 = 0;  0.5 + ln 2 - 1 = 0.193147;  2 - ln 2 - 1 = 0.306853
    np.testing.assert_allclose(k3_kl(logp, ref), [0.0, 0.193147, 0.306853], atol=1e-6)
    np.testing.assert_allclose(policy_ratio(jnp.log(0.3), jnp.log(0.2)), 1.5, rtol=1e-6)


# Two outputs of three tokens; the second output has two. logp_old = 0, so rho = exp(logp_new).
RATIOS = np.array([[1.0, 1.5, 0.5], [1.5, 0.5, 9.0]])
MASK = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
ADV = np.array([1.0, -1.0])
# Per-token min(rho A, clip(rho, 0.8, 1.2) A):
#   output 1 (A = +1): min(1, 1) = 1;  min(1.5, 1.2) = 1.2 (clipped);  min(0.5, 0.8) = 0.5
#   output 2 (A = -1): min(-1.5, -1.2) = -1.5;  min(-0.5, -0.8) = -0.8 (clipped);  masked
#   sums 2.7 and -2.3 over 3 and 2 tokens.
EXPECTED_OBJECTIVE = {
    "sequence": (2.7 / 3 + -2.3 / 2) / 2,  # (0.9 - 1.15) / 2 = -0.125
    "token": (2.7 - 2.3) / 5,  # 0.08
    "dr_grpo": (2.7 - 2.3) / (2 * 4),  # max_length 4: 0.05
}


@pytest.mark.parametrize("aggregation", ["sequence", "token", "dr_grpo"])
def test_grpo_loss_by_hand(aggregation):
    config = GRPOConfig(eps_low=0.2, eps_high=0.2, beta=0.0, aggregation=aggregation, max_length=4)
    logp = jnp.log(jnp.asarray(RATIOS))
    loss, metrics = grpo_loss(logp, jnp.zeros_like(logp), None, jnp.asarray(ADV), MASK, config)
    np.testing.assert_allclose(loss, -EXPECTED_OBJECTIVE[aggregation], rtol=1e-6)
    # Clipped: (1.5, A>0) and (0.5, A<0): 2 of 5 tokens.
    np.testing.assert_allclose(metrics["clip_fraction"], 0.4, rtol=1e-6)
    np.testing.assert_allclose(metrics["ratio"], (1 + 1.5 + 0.5 + 1.5 + 0.5) / 5, rtol=1e-6)
    # entropy estimate -mean log pi = -(2 ln 1.5 + 2 ln 0.5) / 5 = -2 ln 0.75 / 5 = 0.115073
    np.testing.assert_allclose(metrics["entropy"], 0.115073, rtol=1e-5)


def test_grpo_loss_kl_term_and_gradients():
    config = GRPOConfig(eps_low=0.2, eps_high=0.2, beta=0.1, aggregation="sequence")
    logp = jnp.log(jnp.asarray(RATIOS))
    ref = logp + jnp.log(2.0)  # pi_ref / pi = 2 everywhere: k3 = 2 - ln 2 - 1 = 0.306853
    loss_fn = lambda lp: grpo_loss(lp, jnp.zeros_like(lp), ref, jnp.asarray(ADV), MASK, config)  # noqa: E731
    loss, metrics = loss_fn(logp)
    np.testing.assert_allclose(metrics["kl"], 0.306853, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.125 + 0.1 * 0.306853, rtol=1e-5)
    # Without the KL term, d loss / d logp_new = -A rho / (|o_i| G) on unclipped tokens and 0
    # on clipped or masked ones: output 1 token 0: -1 * 1 / (3 * 2) = -1/6; output 2 token 0:
    # +1 * 1.5 / (2 * 2) = 0.375; token 2 of output 1 (rho 0.5, unclipped): -0.5 / 6.
    config0 = GRPOConfig(beta=0.0)
    grad = jax.grad(lambda lp: grpo_loss(lp, jnp.zeros_like(lp), None, jnp.asarray(ADV), MASK,
                                         config0)[0])(logp)
    np.testing.assert_allclose(grad, [[-1 / 6, 0.0, -0.5 / 6], [0.375, 0.0, 0.0]], atol=1e-6)


def test_aggregate_rejects_unknown_and_dr_grpo_needs_length():
    with pytest.raises(ValueError, match="max_length"):
        GRPOConfig(aggregation="dr_grpo")
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(jnp.ones((1, 1)), jnp.ones((1, 1)), "mean")


# GSPO: two outputs (one group, A = +1 and -1); logp_old = 0, so the token log-ratios are
# logp_new. Output 1: [0.3, -0.1, 0.1], mean 0.1, s_1 = e^0.1 = 1.105171. Output 2:
# [0.2, -0.4] and a masked 5.0, mean -0.1, s_2 = e^-0.1 = 0.904837.
GSPO_LOG_RATIOS = np.array([[0.3, -0.1, 0.1], [0.2, -0.4, 5.0]])
GSPO_MASK = np.array([[1, 1, 1], [1, 1, 0]], np.float32)


def gspo(eps_low, eps_high, beta=0.0):
    return GRPOConfig(importance="sequence", seq_eps_low=eps_low, seq_eps_high=eps_high, beta=beta)


def test_gspo_sequence_ratio_and_loss_by_hand():
    logp = jnp.asarray(GSPO_LOG_RATIOS)
    np.testing.assert_allclose(sequence_ratio(logp, jnp.zeros_like(logp), GSPO_MASK),
                               [1.105171, 0.904837], rtol=1e-6)
    loss_of = lambda config, ref=None: grpo_loss(logp, jnp.zeros_like(logp), ref, jnp.asarray(ADV),  # noqa: E731
                                                 GSPO_MASK, config)
    # Clip range 0.2 / 0.2: neither ratio leaves [0.8, 1.2], so
    # J = (s_1 A_1 + s_2 A_2) / G = (1.105171 - 0.904837) / 2 = 0.100167.
    loss, metrics = loss_of(gspo(0.2, 0.2))
    np.testing.assert_allclose(loss, -0.100167, rtol=1e-5)
    assert float(metrics["clip_fraction"]) == 0.0
    np.testing.assert_allclose(metrics["ratio"], (1.105171 + 0.904837) / 2, rtol=1e-6)  # mean s_i
    # The paper's range 3e-4 / 4e-4: s_1 > 1.0004 with A > 0 -> 1.0004; s_2 < 0.9997 with
    # A < 0 -> min(-0.904837, -0.9997) = -0.9997. J = (1.0004 - 0.9997) / 2 = 0.00035, and
    # all 5 tokens belong to a clipped output.
    loss, metrics = loss_of(gspo(3e-4, 4e-4))
    np.testing.assert_allclose(loss, -0.00035, rtol=1e-4)
    np.testing.assert_allclose(metrics["clip_fraction"], 1.0)
    # KL (beta 0.1), pi_ref / pi = 2 everywhere: k3 = 2 - ln 2 - 1 = 0.306853 per token,
    # averaged per output: loss = -0.100167 + 0.1 x 0.306853 = -0.069482.
    loss, metrics = loss_of(gspo(0.2, 0.2, beta=0.1), ref=logp + jnp.log(2.0))
    np.testing.assert_allclose(loss, -0.069482, rtol=1e-5)


def test_gspo_gradient_weighs_every_token_of_an_output_alike():
    logp = jnp.asarray(GSPO_LOG_RATIOS)
    grad_of = lambda config: jax.grad(lambda lp: grpo_loss(  # noqa: E731
        lp, jnp.zeros_like(lp), None, jnp.asarray(ADV), GSPO_MASK, config)[0])(logp)
    # d J / d logp_it = A_i s_i / (G |o_i|): output 1: 1.105171 / (2 x 3) = 0.184195 per
    # token; output 2: -0.904837 / (2 x 2) = -0.226209; masked: 0. The loss is -J.
    np.testing.assert_allclose(grad_of(gspo(0.2, 0.2)),
                               [[-0.184195] * 3, [0.226209, 0.226209, 0.0]], rtol=1e-5)
    # GRPO on the same tokens (eps 0.2) drops token 0 of output 1 (rho = e^0.3 = 1.35 >
    # 1.2 with A > 0) and weighs the rest by their own rho: the re-routing-prone per-token
    # view GSPO replaces. Token 1 of output 1: -e^-0.1 / (3 x 2) = -0.150806.
    grpo_grad = jax.grad(lambda lp: grpo_loss(lp, jnp.zeros_like(lp), None, jnp.asarray(ADV), GSPO_MASK,
                                              GRPOConfig(beta=0.0))[0])(logp)
    np.testing.assert_allclose(grpo_grad[0, :2], [0.0, -0.150806], atol=1e-6)
    # Outside the paper's narrow range the whole output is clipped: no gradient at all.
    np.testing.assert_allclose(grad_of(gspo(3e-4, 4e-4)), 0.0, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"importance": "tokens"}, "importance"),
    ({"importance": "sequence", "aggregation": "token"}, "aggregation"),
    ({"importance": "sequence", "seq_eps_low": 1.0}, "seq_eps_low"),
    ({"seq_eps_high": -0.1}, "seq_eps_high"),
])
def test_gspo_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kwargs)


def test_bandit_grpo_raises_the_rewarded_answer():
    """A categorical policy over 5 answers (plain logits); only answer 3 earns reward 1."""
    num_answers, rewarded, group = 5, 3, 8
    theta = jnp.zeros(num_answers)
    ref_theta = theta
    optimizer = optax.adam(0.1)
    opt_state = optimizer.init(theta)
    config = GRPOConfig(beta=0.04)
    mask = jnp.ones((group, 1))

    def logp_of(theta, answers):  # [G] -> [G, 1]: each output is one token
        return jax.nn.log_softmax(theta)[answers][:, None]

    @jax.jit
    def iteration(theta, opt_state, rng):
        answers = jax.random.categorical(rng, theta, shape=(group,))  # sample from pi_old
        rewards = (answers == rewarded).astype(jnp.float32)
        advantages = group_advantages(rewards, group)
        old, ref = logp_of(theta, answers), logp_of(ref_theta, answers)
        for _ in range(2):  # mu = 2 policy updates per batch of samples
            grads = jax.grad(lambda t: grpo_loss(logp_of(t, answers), old, ref, advantages, mask,
                                                 config)[0])(theta)
            updates, opt_state = optimizer.update(grads, opt_state)
            theta = optax.apply_updates(theta, updates)
        return theta, opt_state

    p_before = float(jax.nn.softmax(theta)[rewarded])  # 0.2
    for step in range(15):
        theta, opt_state = iteration(theta, opt_state, jax.random.PRNGKey(step))
    p_after = float(jax.nn.softmax(theta)[rewarded])
    assert p_before == pytest.approx(0.2)
    assert p_after > 0.8, p_after
