import jax
import jax.numpy as jnp
import numpy as np

from helpers import lm_batch, tiny_model_config
from moe_jax.models.transformer import Transformer
from moe_jax.moe.router import BIAS_COLLECTION, LOAD_COLLECTION, update_bias
from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
from moe_jax.train.state import create_train_state
from moe_jax.train.step import make_train_step
from moe_jax.train.losses import LossWeights


def setup(learning_rate=3e-3, **model_overrides):
    m = tiny_model_config(**model_overrides)
    model = Transformer.from_config(m)
    opt_config = default_optimizer_config()
    opt_config.warmup_steps, opt_config.total_steps, opt_config.learning_rate = 10, 100, learning_rate
    optimizer = make_optimizer(opt_config)
    state = create_train_state(model, optimizer, jax.random.PRNGKey(0), 16)
    return m, model, optimizer, state


def test_tiny_model_halves_loss_on_a_repeated_batch_within_100_steps():
    m, model, optimizer, state = setup()
    batch = lm_batch(jax.random.randint(jax.random.PRNGKey(1), (4, 33), 0, m.vocab_size))
    step = jax.jit(make_train_step(model, optimizer, LossWeights.from_config(m), m.bias_update_rate), donate_argnums=0)
    first = None
    for i in range(100):
        state, metrics = step(state, batch, jax.random.PRNGKey(i))
        loss = float(metrics["loss"])
        first = loss if first is None else first
        if loss < first / 2:
            break
    assert loss < first / 2, (first, loss, i)


def test_train_step_updates_router_bias_by_the_rule():
    m, model, optimizer, state = setup()
    batch = lm_batch(jax.random.randint(jax.random.PRNGKey(1), (4, 17), 0, m.vocab_size))
    # The loads the first step sees, computed independently with the initial parameters.
    _, mutated = model.apply({"params": state.params, BIAS_COLLECTION: state.router_bias},
                             batch["inputs"], mutable=[LOAD_COLLECTION])
    loads = mutated[LOAD_COLLECTION]
    expected = jax.tree.map(lambda b, l: update_bias(b, l, m.bias_update_rate), state.router_bias, loads)
    before = jax.tree.map(np.asarray, state.router_bias)
    new_state, _ = jax.jit(make_train_step(model, optimizer, LossWeights.from_config(m), m.bias_update_rate))(state, batch, jax.random.PRNGKey(0))
    for got, want, old in zip(jax.tree.leaves(new_state.router_bias), jax.tree.leaves(expected),
                              jax.tree.leaves(before)):
        np.testing.assert_allclose(got, want, atol=1e-7)
        assert float(np.abs(np.asarray(got) - old).max()) > 0  # it moved
    # Every router (3 scanned MoE layers and the MTP layer) has its own bias.
    assert jax.tree.leaves(new_state.router_bias)[0].shape == (m.num_layers - m.num_dense_layers, m.num_experts)


def test_training_with_the_rule_undoes_a_skewed_bias():
    # Start every router with a bias that favours experts 0-3; the rule, applied by the
    # train step, must bring the load back towards balance, and without it nothing moves.
    # The learning rate is zero so that only the rule can change the routing.
    def run(rate):
        m, model, optimizer, state = setup(learning_rate=0.0, bias_update_rate=rate)
        skew = jnp.where(jnp.arange(m.num_experts) < 4, 0.15, 0.0)
        state = state.replace(router_bias=jax.tree.map(lambda b: b + skew, state.router_bias))
        step = jax.jit(make_train_step(model, optimizer, LossWeights.from_config(m), m.bias_update_rate), donate_argnums=0)
        rng = np.random.default_rng(0)
        ratios = []
        for i in range(50):
            batch = lm_batch(rng.integers(0, m.vocab_size, (4, 33)))
            state, metrics = step(state, batch, jax.random.PRNGKey(i))
            ratios.append(float(metrics["max_load_ratio"]))
        return ratios

    with_rule, without_rule = run(0.005), run(0.0)
    assert with_rule[0] > 2.0 and without_rule[-1] > 2.0, (with_rule, without_rule)
    # 128 tokens per batch make the per-batch load noisy (max/mean ~1.5 even when the
    # router is balanced), so the bar is relative: the skew must be mostly undone.
    assert np.mean(with_rule[-5:]) < 0.6 * with_rule[0], with_rule
    assert np.mean(with_rule[-5:]) < 0.6 * np.mean(without_rule[-5:]), (with_rule, without_rule)
