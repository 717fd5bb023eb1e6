"""Routing replay through the GRPO update: with replay on, the update runs the experts the
sampler recorded for every real token (logged change fraction 0) although its router has
moved; with it off, the logged figures report that re-routing. Router health by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from moe_jax.config import load_config
from moe_jax.infer.generate import generate, inference_config
from moe_jax.models.transformer import Transformer
from moe_jax.rl.grpo import GRPOConfig
from moe_jax.rl.learner import make_grpo_step
from moe_jax.rl.policy import rollout_layout, scoring_model, sequence_logprobs
from moe_jax.rl.router_health import router_health
from moe_jax.train.state import TrainState
from moe_jax.train.step import stacked_router_bias

# configs/tiny.py made small: one dense layer, then M = 2 MoE layers of 4 experts, top-2.
OVERRIDES = [
    "model.d_model=32", "model.num_layers=3", "model.dense_ffn=64", "model.num_heads=2",
    "model.q_lora_rank=16", "model.kv_lora_rank=16", "model.qk_nope_head_dim=8",
    "model.qk_rope_head_dim=4", "model.v_head_dim=8", "model.num_experts=4",
    "model.expert_ffn=16", "model.top_k=2", "model.n_group=1", "model.topk_group=1"]
LENGTHS = np.array([5, 3, 4, 2])  # left-padded prompts


def test_router_health_by_hand():
    # M = 2 layers, one row of T = 3 tokens (the last is padding), K = 2, E = 4.
    used = jnp.array([[[[0, 1], [0, 2], [3, 3]]], [[[0, 1], [2, 3], [0, 0]]]])  # [M, B, T, K]
    preferred = jnp.array([[[[0, 1], [0, 2], [3, 3]]], [[[0, 2], [2, 3], [1, 1]]]])
    rollout = jnp.moveaxis(jnp.array([[[[1, 0], [0, 3], [2, 3]]], [[[1, 0], [3, 2], [2, 2]]]]), 0, 2)
    stats = {"expert_index": used, "preferred_index": preferred,
             "routing_entropy": jnp.array([[[0.5, 0.3, 9.0]], [[1.0, 0.2, 5.0]]])}
    out = router_health(stats, rollout, jnp.array([[1, 1, 0]]), num_experts=4)
    # Layer 1: token 0 runs {0, 1} = the rollout's {1, 0}; token 1 runs {0, 2} != {0, 3}:
    # 1 of 2 real tokens changed. Its own choice is what ran: the same 0.5. Layer 2 ran
    # the rollout's sets, but its router would pick {0, 2} for token 0: 0.5 recomputed.
    np.testing.assert_allclose(out["routing/changed"], [0.5, 0.0])
    np.testing.assert_allclose(out["routing/recomputed_changed"], [0.5, 0.5])
    # Entropy over real tokens: (0.5 + 0.3) / 2, (1.0 + 0.2) / 2.
    np.testing.assert_allclose(out["routing/entropy"], [0.4, 0.6], rtol=1e-6)
    # Loads over real tokens: layer 1 [2, 1, 1, 0] (max 2 / mean 1); layer 2 [1, 1, 1, 1].
    np.testing.assert_allclose(out["routing/max_over_mean_load"], [2.0, 1.0])
    np.testing.assert_allclose([out["expert_changed"], out["expert_recomputed_changed"],
                                out["routing_entropy"]], [0.25, 0.5, 0.5], rtol=1e-6)


@pytest.fixture(scope="module")
def rollout():
    """A sampled rollout of the tiny model with its recorded experts, and router biases
    moved far enough that the router now picks other experts for many tokens (as an RL
    run that updates the biases, or a few optimizer steps, would)."""
    m = inference_config(load_config("configs/tiny.py", OVERRIDES).model)
    variables = nn.unbox(jax.jit(Transformer.from_config(m).init)(jax.random.PRNGKey(0),
                                                                  jnp.zeros((1, 4), jnp.int32)))
    prompts = np.array(jax.random.randint(jax.random.PRNGKey(1), (len(LENGTHS), 5), 3, m.vocab_size))
    prompts[np.arange(5)[None] < (5 - LENGTHS)[:, None]] = 0
    out = generate(m, variables["params"], variables["router_bias"], prompts, LENGTHS, max_new_tokens=6,
                   temperature=1.0, rng=jax.random.PRNGKey(2), record_experts=True)
    batch = rollout_layout(prompts, LENGTHS, out["tokens"], out["lengths"])
    batch["expert_index"] = np.asarray(out["expert_index"])
    batch["advantages"] = np.array([1.0, -1.0, 0.5, -0.5], np.float32)
    moved = jax.tree.map(lambda b: b + 2.0 * jax.random.normal(jax.random.PRNGKey(3), b.shape),
                         variables["router_bias"])
    return dict(m=m, params=variables["params"], bias=variables["router_bias"], moved=moved, batch=batch)


@functools.lru_cache(maxsize=4)
def _compiled(m, replay, rate):
    """(scorer, GRPO step) for these settings, compiled once for the tests that share them."""
    model = scoring_model(m)
    score = jax.jit(lambda params, bias, batch: sequence_logprobs(model, params, bias, batch, replay))
    step = jax.jit(make_grpo_step(model, optax.sgd(1e-2), GRPOConfig(beta=0.0), replay=replay,
                                  bias_update_rate=rate))
    return score, step


def _step(s, replay, rate, bias):
    score, step = _compiled(s["m"], replay, rate)
    batch = dict(s["batch"])
    batch["old_logprobs"] = score(s["params"], bias, batch)[0]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=s["params"],
                       opt_state=optax.sgd(1e-2).init(s["params"]), router_bias=bias)
    return step(state, batch)


def test_replay_runs_the_rollouts_experts_for_every_token(rollout):
    s = rollout
    real = s["batch"]["segment_ids"][:, :-1] > 0
    _, _, stats = _compiled(s["m"], True, 0.0)[0](s["params"], s["moved"], s["batch"])
    ran = np.sort(np.moveaxis(np.asarray(stats["expert_index"]), 0, 2)[real], -1)  # [tokens, M, K]
    np.testing.assert_array_equal(ran, np.sort(s["batch"]["expert_index"][:, :-1][real], -1))
    # The update under replay: nothing changed, though its router would choose otherwise;
    # the biases stay frozen (rate 0).
    state, metrics = _step(s, replay=True, rate=0.0, bias=s["moved"])
    np.testing.assert_array_equal(metrics["routing/changed"], np.zeros(2))
    assert float(metrics["expert_changed"]) == 0.0
    assert float(metrics["expert_recomputed_changed"]) > 0.2
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    for a, b in zip(jax.tree.leaves(state.router_bias), jax.tree.leaves(s["moved"])):
        np.testing.assert_array_equal(a, b)


def test_without_replay_the_update_reports_re_routing(rollout):
    s = rollout
    # The sampler's own router (cached decoding) and the update's full forward agree on
    # the experts of (nearly) every token: the record is aligned with the tokens.
    _, metrics = _step(s, replay=False, rate=0.01, bias=s["bias"])
    assert float(metrics["expert_changed"]) <= 0.02
    # The moved router re-routes: changed = recomputed (what ran is the router's choice).
    state, metrics = _step(s, replay=False, rate=0.01, bias=s["moved"])
    assert float(metrics["expert_changed"]) > 0.2
    np.testing.assert_allclose(metrics["routing/changed"], metrics["routing/recomputed_changed"])
    assert metrics["routing/entropy"].shape == (2,) and np.all(metrics["routing/entropy"] > 0)
    assert np.all(metrics["routing/max_over_mean_load"] >= 1.0)
    # update_router_bias: the biases moved by the rate, and the logged value is the new one.
    moved = np.asarray(stacked_router_bias(state.router_bias))
    before = np.asarray(stacked_router_bias(s["moved"]))
    np.testing.assert_array_equal(metrics["routing/bias"], moved)
    main = slice(0, 2)  # the MTP module's router is not scored: its bias stays
    assert np.all(np.abs(moved[main] - before[main]) <= 0.01 + 1e-7) and np.any(moved[main] != before[main])
    np.testing.assert_array_equal(moved[2:], before[2:])
