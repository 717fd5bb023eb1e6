import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.infer.sampling import filter_logits, sample_rows, sample_tokens, token_logprobs, top_logprobs


def test_top_k_and_top_p_keep_the_expected_tokens():
    # probabilities 0.5, 0.25, 0.125, 0.125 (logits are their logs)
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.125, 0.125]]))
    kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, **kw)))[0].tolist()  # noqa: E731
    assert kept(top_k=2) == [True, True, False, False]
    # top_p 0.7: 0.5 < 0.7 so the second token is needed too (mass before it 0.5 < 0.7);
    # the third has 0.75 before it and is dropped.
    assert kept(top_p=0.7) == [True, True, False, False]
    assert kept(top_p=0.5) == [True, False, False, False]  # mass before token 2 is 0.5, not < 0.5
    assert kept(top_p=0.8) == [True, True, True, True]  # ties at the threshold stay
    # Temperature 0.5 squares the odds: p = (0.25, 0.0625, 0.0156, 0.0156)/0.344
    np.testing.assert_allclose(jax.nn.softmax(filter_logits(logits, temperature=0.5))[0],
                               np.array([16, 4, 1, 1]) / 22, rtol=1e-6)


def test_sample_tokens_greedy_and_frequencies():
    logits = jnp.log(jnp.array([[0.1, 0.6, 0.3]]))
    assert int(sample_tokens(logits, None)[0]) == 1
    many = jnp.repeat(logits, 4000, axis=0)
    draws = np.asarray(sample_tokens(many, jax.random.PRNGKey(0), temperature=1.0))
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.1, 0.6, 0.3], atol=0.03)
    np.testing.assert_allclose(token_logprobs(logits, jnp.array([2])), np.log([0.3]), rtol=1e-6)


def test_per_row_settings_equal_the_batch_wide_sampler_row_by_row():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 50)) * 3
    temperature = jnp.array([0.0, 0.7, 1.0, 1.5])
    top_p = jnp.array([1.0, 0.9, 1.0, 0.3])
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    got = sample_rows(logits, keys, temperature, top_p)
    for row in range(4):
        alone = sample_tokens(logits[row:row + 1], keys[row], temperature=float(temperature[row]),
                              top_p=float(top_p[row]))
        assert int(got[row]) == int(alone[0])
    # Per-row top_p filters each row as the scalar setting does.
    filtered = filter_logits(logits, temperature=temperature[:, None] + 1.0, top_p=top_p[:, None])
    for row in range(4):
        np.testing.assert_array_equal(
            np.isfinite(filtered[row]),
            np.isfinite(filter_logits(logits[row:row + 1], temperature=float(temperature[row]) + 1.0,
                                      top_p=float(top_p[row]))[0]))
    values, ids = top_logprobs(logits, 3)
    np.testing.assert_allclose(values, np.sort(jax.nn.log_softmax(logits), axis=-1)[:, ::-1][:, :3],
                               rtol=1e-6)
    np.testing.assert_array_equal(ids, np.argsort(-np.asarray(logits), axis=-1)[:, :3])
