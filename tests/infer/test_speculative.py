"""Speculative decoding with the MTP module against plain cached decoding: the same greedy
tokens, log-probs and recorded experts; the same sampling distribution (chi-square tests
against the model's exact probabilities); the acceptance rule on its own."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from jax.scipy.special import gammaincc

from moe_jax.config import load_config
from moe_jax.infer.generate import generate, inference_config
from moe_jax.infer.speculative import accept_or_correct
from moe_jax.models.transformer import Transformer

PAD = 0
LENGTHS = np.array([7, 2, 4, 1, 5, 7])  # left-padded prompts of different lengths
P, N = 7, 12


def agreeing_drafts(params, scale):
    """Weights whose MTP module mostly agrees with the main model, so that greedy drafts
    are often accepted and sometimes not: the main layers' output projections are scaled
    by `scale` (0 would leave logits(i) = head(norm(emb(t_i))), a function of the token
    alone), and the MTP module is made to compute exactly that function of the token it
    reads (projection [I; 0] onto the embedding half, its layer's outputs zeroed)."""
    flat = traverse_util.flatten_dict(params)
    for path, value in flat.items():
        if path[-1] in ("o", "down", "wo"):
            flat[path] = value * (0.0 if path[0] == "mtp_0" else scale)
        if path == ("mtp_0", "proj"):
            d = value.shape[1]
            flat[path] = jnp.concatenate([jnp.eye(d), jnp.zeros((d, d))]).astype(value.dtype)
    return traverse_util.unflatten_dict(flat)


@pytest.fixture(scope="module")
def setup(tiny_model):
    m = tiny_model["m"]
    assert m.mtp_depth == 1
    tokens = np.array(jax.random.randint(jax.random.PRNGKey(1), (len(LENGTHS), P), 3, m.vocab_size))
    tokens[np.arange(P)[None] < (P - LENGTHS)[:, None]] = PAD
    bias = jax.tree.map(lambda b: 0.3 * jax.random.normal(jax.random.PRNGKey(3), b.shape),
                        tiny_model["router_bias"])
    s = dict(m=m, tokens=tokens, bias=bias, params=agreeing_drafts(tiny_model["params"], 0.7),
             random_params=tiny_model["params"], stop=())
    # Stop on a token only some rows produce, so stopped and running rows both occur.
    s["stop"] = (_stop_token(np.asarray(_both(s, s["params"], speculative=(False,))[0]["tokens"])),)
    return s


def _both(s, params, speculative=(False, True)):
    """Plain and speculative greedy decoding (one compile each for the module's stop token)."""
    return [generate(s["m"], params, s["bias"], s["tokens"], LENGTHS, max_new_tokens=N, pad_id=PAD,
                     stop_tokens=s["stop"], record_experts=True, speculative=spec) for spec in speculative]


def _stop_token(tokens):
    """A token some rows produce and others never do."""
    for t in tokens.reshape(-1):
        rows = (tokens == t).any(axis=1)
        if rows.any() and not rows.all():
            return int(t)
    raise AssertionError(tokens)


def test_greedy_equals_plain_decoding_tokens_logprobs_and_experts(setup):
    s = setup
    plain, spec = _both(s, s["params"])
    for key in ("tokens", "lengths", "finished"):
        np.testing.assert_array_equal(spec[key], plain[key], err_msg=key)
    assert np.asarray(plain["finished"]).any() and not np.asarray(plain["finished"]).all()
    np.testing.assert_allclose(spec["logprobs"], plain["logprobs"], atol=1e-5)
    # Both accepted and rejected drafts occurred. The first token needs no draft, then
    # each verify step emits one token, and one more when its draft is kept (unless the
    # row stops or reaches N in between).
    accepted, proposed = np.asarray(spec["draft_accepted"]), np.asarray(spec["draft_proposed"])
    assert 0 < accepted.sum() < proposed.sum()
    lengths = np.asarray(spec["lengths"])
    assert np.all(1 + proposed <= lengths) and np.all(lengths <= 1 + proposed + accepted)
    # The experts of every real prompt token and every fed response token are recorded
    # at the same columns as plain decoding records them.
    for row in range(len(LENGTHS)):
        columns = np.arange(P - LENGTHS[row], P + int(plain["lengths"][row]) - 1)
        np.testing.assert_array_equal(np.sort(spec["expert_index"][row, columns], -1),
                                      np.sort(plain["expert_index"][row, columns], -1))


def test_rejected_random_drafts_change_nothing(setup):
    """An untrained MTP module: its drafts are rejected (some may match by chance), and
    greedy output must still be plain decoding's."""
    plain, spec = _both(setup, setup["random_params"])
    np.testing.assert_array_equal(spec["tokens"], plain["tokens"])
    np.testing.assert_array_equal(spec["lengths"], plain["lengths"])
    np.testing.assert_allclose(spec["logprobs"], plain["logprobs"], atol=1e-5)
    assert int(np.sum(spec["draft_accepted"])) < int(np.sum(spec["draft_proposed"]))


def test_speculative_needs_an_mtp_module(tiny_model):
    m = tiny_model["m"].as_configdict()
    m.mtp_depth = 0
    with pytest.raises(ValueError, match="mtp_depth"):
        generate(m, tiny_model["params"], tiny_model["router_bias"], np.ones((1, 2), np.int32), [2],
                 max_new_tokens=2, speculative=True)


def _chi_square(counts, probs, min_expected=5.0):
    """Pearson's statistic and p-value, cells expecting fewer than min_expected pooled."""
    expected = probs * counts.sum()
    small = expected < min_expected
    observed = np.append(counts[~small], counts[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    stat = float((((observed - expected) ** 2)[keep] / expected[keep]).sum())
    return stat, float(gammaincc((keep.sum() - 1) / 2, stat / 2))


def test_acceptance_rule_samples_the_target_distribution():
    # p and q over 5 tokens: q puts mass where p has little, so all three paths occur
    # (accept; reject and draw from the residual max(p - q, 0) = [0.3, 0.1, 0, 0, 0] / 0.4).
    p = np.array([0.4, 0.3, 0.2, 0.1, 0.0])
    q = np.array([0.1, 0.2, 0.3, 0.2, 0.2])
    rows = 40_000
    draft = jax.random.categorical(jax.random.PRNGKey(0), jnp.log(q), shape=(rows,)).astype(jnp.int32)
    logp = jnp.broadcast_to(jnp.log(p), (rows, 5))
    logq = jnp.broadcast_to(jnp.log(q), (rows, 5))
    accepted, correction = accept_or_correct(logp, logq, draft, jax.random.PRNGKey(1), 1.0)
    emitted = np.where(accepted, draft, correction)
    counts = np.bincount(emitted, minlength=5)
    assert counts[4] == 0  # p(4) = 0 is never emitted though q drafts it 20% of the time
    # Acceptance rate sum_x min(p, q) = 0.1 + 0.2 + 0.2 + 0.1 + 0 = 0.6.
    assert abs(float(np.mean(accepted)) - 0.6) < 0.01
    assert _chi_square(counts[:4], p[:4])[1] > 1e-3
    # The test has power: drawing the correction from p instead of the residual is found.
    wrong = np.where(accepted, draft, jax.random.categorical(jax.random.PRNGKey(2), logp[:, :4]))
    assert _chi_square(np.bincount(wrong, minlength=4), p[:4])[1] < 1e-6
    # Greedy: a draft is kept iff it is p's argmax, else the argmax is emitted.
    kept, fixed = accept_or_correct(logp[:3], logq[:3], jnp.array([0, 2, 4]), None, 0.0)
    np.testing.assert_array_equal(kept, [True, False, False])
    np.testing.assert_array_equal(fixed, [0, 0, 0])


@pytest.fixture(scope="module")
def four_token_model(tiny_model):
    """The tiny test model with a vocabulary of 4 (weights large enough for uneven
    distributions) and an untrained MTP module: drafts are accepted about half the time."""
    overrides = list(tiny_model["overrides"]) + ["model.vocab_size=4", "model.init_std=0.3"]
    m = inference_config(load_config("configs/tiny.py", overrides).model)
    model = Transformer.from_config(m)
    variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))
    return m, model, variables


def test_temperature_one_samples_match_the_model_distribution(four_token_model):
    """4000 samples of 3 tokens after one prompt, plain and speculative, each tested
    against the model's exact probabilities of all 4^3 continuations (chi-square)."""
    m, model, variables = four_token_model
    prompt, rows, n = np.array([[1, 2, 3]]), 4000, 3
    continuations = np.array(list(itertools.product(range(4), repeat=n)))  # [64, 3]
    full = np.concatenate([np.repeat(prompt, len(continuations), 0), continuations], axis=1)
    logits, _ = jax.jit(model.apply)(variables, full)
    logp = jax.nn.log_softmax(logits[:, prompt.shape[1] - 1:-1], axis=-1)
    probs = np.exp(np.take_along_axis(np.asarray(logp), continuations[..., None], -1)[..., 0].sum(1))
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    assert probs.max() > 3 / 64  # far from uniform: a wrong sampler would show

    def counts(speculative, seed):
        out = generate(m, variables["params"], variables["router_bias"], np.repeat(prompt, rows, 0),
                       np.full(rows, 3), max_new_tokens=n, temperature=1.0,
                       rng=jax.random.PRNGKey(seed), speculative=speculative)
        index = (np.asarray(out["tokens"]) * 4 ** np.arange(n)[::-1]).sum(axis=1)
        return np.bincount(index, minlength=len(probs)), out

    plain, _ = counts(False, 1)
    spec, out = counts(True, 2)
    acceptance = np.sum(out["draft_accepted"]) / np.sum(out["draft_proposed"])
    assert 0.2 < acceptance < 0.9  # both paths of the rule are exercised
    assert _chi_square(plain, probs)[1] > 1e-3
    assert _chi_square(spec, probs)[1] > 1e-3
    # Power: the same statistic rejects a distribution a few points off the model's
    # (the exact probabilities with the 8 likeliest continuations' mass moved uniformly).
    off = probs.copy()
    top = np.argsort(probs)[-8:]
    off[top] *= 0.8
    off += (1 - off.sum()) / len(off)
    assert _chi_square(spec, off)[1] < 1e-3
