"""DP-SGD's step: per-example gradients against a loop over single rows, optax's
aggregation (clip, sum, noise, mean) against the arithmetic, the step against the plain
step where they must agree, and a DP run through the trainer core on a mesh, resumed."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import lm_batch, rewind, tiny_char_model
from moe_jax.analysis.membership import membership_attack
from moe_jax.config import load_config
from moe_jax.data.splits import load_data
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.models.transformer import Transformer
from moe_jax.train import loop
from moe_jax.train.dp_step import NoiseKeyState, dp_aggregate, dp_optimizer, make_dp_train_step, per_example_grads
from moe_jax.train.loader import load_model
from moe_jax.train.losses import LossWeights
from moe_jax.train.metrics import read_metrics
from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
from moe_jax.train.privacy import PrivacySettings, epsilon
from moe_jax.train.state import TrainState
from moe_jax.train.step import forward_with_loss, make_train_step


@pytest.fixture(scope="module")
def micro():
    """A micro MoE whose capacity dispatch drops tokens by what else is in the batch, with
    the batch-level balance loss on: per example, neither may leak between rows."""
    m, params, router_bias = tiny_char_model()
    m.update(dispatch="capacity", capacity_factor=0.5, aux_loss_coef=0.01, bias_update_rate=0.0)
    rows = np.random.default_rng(0).integers(3, 90, (4, 13))
    return m, Transformer.from_config(m), params, router_bias, lm_batch(rows)


def test_per_example_gradients_are_each_rows_own(micro):
    m, model, params, router_bias, batch = micro
    weights = LossWeights.from_config(m)
    losses, _, grads = jax.jit(lambda p, b: per_example_grads(model, weights, p, router_bias, b))(params, batch)
    # The obviously correct reference: the row alone, as a batch of one (one compile, 4 calls).
    alone = jax.jit(jax.value_and_grad(lambda p, row: forward_with_loss(model, p, router_bias, row, weights)[0]))
    for i in range(4):
        loss, reference = alone(params, jax.tree.map(lambda x: x[i:i + 1], batch))
        assert float(losses[i]) == pytest.approx(float(loss), rel=1e-5)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
            np.testing.assert_allclose(got[i], want, atol=2e-6, rtol=1e-4)


def test_the_aggregation_clips_sums_noises_and_averages():
    rng = np.random.default_rng(1)
    grads = {"a": jnp.asarray(rng.normal(size=(5, 300, 40)), jnp.float32),
             "b": jnp.asarray(rng.normal(size=(5, 7)) * 0.01, jnp.float32)}
    norms = np.sqrt(sum(np.sum(np.asarray(g).reshape(5, -1) ** 2, 1) for g in grads.values()))
    scale = np.minimum(1.0, 2.0 / norms)  # clip norm C = 2 (every row here is clipped but the last)
    grads["a"] = grads["a"].at[4].multiply(1e-3)
    grads["b"] = grads["b"].at[4].multiply(1e-3)
    norms[4] *= 1e-3
    scale[4] = 1.0
    expected = jax.tree.map(lambda g: jnp.tensordot(jnp.asarray(scale, jnp.float32), g, 1) / 5, grads)

    silent = dp_aggregate(2.0, 0.0, seed=3)
    out, _ = silent.update(grads, silent.init(None))
    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

    noisy = dp_aggregate(2.0, 1.5, seed=3)
    state = noisy.init(None)
    assert isinstance(state, NoiseKeyState) and state.key.dtype == jnp.uint32 and state.key.shape == (2,)
    out, new_state = noisy.update(grads, state)
    # (out - clipped mean) x B is the noise: N(0, (sigma C)^2) per coordinate.
    noise = np.asarray(out["a"] - expected["a"]).ravel() * 5
    assert np.std(noise) == pytest.approx(1.5 * 2.0, rel=0.05) and abs(np.mean(noise)) < 0.1
    assert not np.array_equal(new_state.key, state.key)
    again, _ = noisy.update(grads, state)  # the key in the state decides the noise
    np.testing.assert_array_equal(again["a"], out["a"])


def test_without_noise_or_clipping_the_dp_step_is_the_plain_step(micro):
    """Equal-length rows, no batch-level term: the mean of per-example gradients is the
    batch gradient, so one DP step with sigma 0 and a clip no gradient reaches moves the
    parameters as the plain step does."""
    m, _, params, router_bias, batch = micro
    m = m.copy_and_resolve_references()
    m.update(dispatch="dropless", aux_loss_coef=0.0)
    model = Transformer.from_config(m)
    weights = LossWeights.from_config(m)
    c = default_optimizer_config()
    plain_opt = make_optimizer(c)
    private_opt = dp_optimizer(make_optimizer(c), PrivacySettings(1e6, 0.0, 1e-5, 0.1, 1), seed=0)
    plain_state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=plain_opt.init(params),
                             router_bias=router_bias)
    private_state = plain_state.replace(opt_state=private_opt.init(params))
    rng = jax.random.PRNGKey(0)
    after_plain, plain_metrics = jax.jit(make_train_step(model, plain_opt, weights, 0.0))(plain_state, batch, rng)
    after_dp, dp_metrics = jax.jit(make_dp_train_step(model, private_opt, weights, 1e6))(private_state, batch, rng)
    assert float(dp_metrics["loss"]) == pytest.approx(float(plain_metrics["loss"]), rel=1e-5)
    assert float(dp_metrics["clipped_fraction"]) == 0.0
    for got, want in zip(jax.tree.leaves(after_dp.params), jax.tree.leaves(after_plain.params)):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)
    # The router bias is never moved under DP.
    for got, want in zip(jax.tree.leaves(after_dp.router_bias), jax.tree.leaves(router_bias)):
        np.testing.assert_array_equal(got, want)


def test_clipping_bounds_what_one_example_moves(micro):
    """With plain SGD after the aggregation (update = -lr x the clipped mean) and no noise,
    every example's gradient is scaled to norm C: the update's norm is at most C, and
    replacing one example of B moves it by at most 2C / B, however large that example's
    own gradient (the sensitivity the Gaussian noise is calibrated to)."""
    m, model, params, router_bias, batch = micro
    clip, b = 1e-3, batch["inputs"].shape[0]
    optimizer = dp_optimizer(optax.sgd(1.0), PrivacySettings(clip, 0.0, 1e-5, 0.1, 1), seed=0)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                       router_bias=router_bias)
    step = jax.jit(make_dp_train_step(model, optimizer, LossWeights.from_config(m), clip))
    # The replaced row: one token repeated, a far-from-typical example with a large loss.
    other = dict(batch, inputs=batch["inputs"].at[0].set(7), targets=batch["targets"].at[0].set(88))
    moves = []
    for rows in (batch, other):
        after, metrics = step(state, rows, jax.random.PRNGKey(0))
        assert float(metrics["clipped_fraction"]) == 1.0  # every raw gradient is above C: clipping bites
        assert float(metrics["grad_norm"]) > 100 * clip
        moves.append(jax.tree.map(lambda new, old: new - old, after.params, params))
    assert 0 < float(optax.global_norm(moves[0])) <= clip * (1 + 1e-4)
    change = float(optax.global_norm(jax.tree.map(jnp.subtract, moves[0], moves[1])))
    assert 0 < change <= 2 * clip / b * (1 + 1e-4)


def dp_run(workdir, steps, fsdp, log=lambda *_: None):
    config = load_config("experiments/dp_arith.py:runlocal")
    config.train.steps, config.train.checkpoint_every, config.train.log_every = steps, 2, 1
    config.mesh.fsdp = fsdp
    config.eval.final_num_examples = 0  # nothing here reads the exact match
    config.data.data_dir = str(workdir.parent / "data")
    return config, loop.train_and_evaluate(config, str(workdir), log=log)


@pytest.mark.slow  # ~1.5 min on 2 busy cores: three short DP runs (two meshes, one resumed), an attack
def test_a_dp_run_on_a_mesh_resumed_matches_one_device_and_logs_its_epsilon(tmp_path):
    config, one = dp_run(tmp_path / "one", 4, 1)
    dp_run(tmp_path / "mesh", 4, 4)
    before = read_metrics(str(tmp_path / "mesh"))
    rewind(str(tmp_path / "mesh"), 2)  # as if stopped after 2 steps ...
    logged = []
    _, mesh = dp_run(tmp_path / "mesh", 4, 4, log=logged.append)  # ... and resumed to 4 on a 4-device mesh
    assert any("resumed from step 2" in line for line in logged), logged
    resumed = read_metrics(str(tmp_path / "mesh"))
    assert sorted(resumed) == [3, 4]
    one_metrics, mesh_metrics = read_metrics(str(tmp_path / "one")), {1: before[1], 2: before[2], **resumed}
    q = config.train.batch_size / config.data.num_train
    for step in range(1, 5):
        # The same noise after the resume: its key is checkpointed with the optimizer state.
        assert mesh_metrics[step]["loss"] == pytest.approx(one_metrics[step]["loss"], rel=2e-4)
        assert one_metrics[step]["dp/epsilon"] == pytest.approx(epsilon(q, 1.0, step, 1e-5))
    assert one["dp"]["epsilon"] == pytest.approx(epsilon(q, 1.0, 4, 1e-5)) and one["dp"]["noise_multiplier"] == 1.0
    assert mesh["mesh"]["fsdp"] == 4 and mesh["dp"] == one["dp"]
    # The membership attack reads the finished run: its losses are mean response-token
    # cross-entropies of the 16 training and 16 held-out problems (a character model
    # barely trained: near log of the vocabulary, well above 0).
    model = load_model(str(tmp_path / "one"), config.model, log=lambda *_: None)
    train, held_out = load_data(config, str(tmp_path / "one"))
    attack = membership_attack(model, train, held_out, get_tokenizer(config.data.tokenizer),
                               config.data.seq_len, num_examples=16)
    assert attack["examples"] == 16 and 0.0 <= attack["auc"] <= 1.0
    assert 0.5 < attack["member_loss"] < 10 and 0.5 < attack["nonmember_loss"] < 10
