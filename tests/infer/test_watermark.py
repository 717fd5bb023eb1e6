"""The green-list watermark: the hash against a plain-integer reference, the detector on
texts built by hand, the key mattering, and the sampler (generate, the engine, GRPO's
rollouts) drawing texts the detector finds."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_char_model
from moe_jax.data.tokenizer import CharTokenizer
from moe_jax.infer.engine import Engine, Request
from moe_jax.infer.generate import generate
from moe_jax.infer.watermark import Watermark, detect, p_value, watermark_config
from moe_jax.models.config import ConfigError

TOK = CharTokenizer()
MASK = 0xFFFFFFFF


def fmix_reference(x: int) -> int:
    """murmur3's finaliser on a Python int, every product reduced mod 2^32 by hand."""
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & MASK
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & MASK
    return x ^ (x >> 16)


def score_reference(key: int, context, token: int) -> int:
    seed = fmix_reference(fmix_reference((key & MASK) ^ 0x5BD1E995) ^ (key >> 32))
    for j, t in enumerate(context):
        seed = fmix_reference(seed ^ fmix_reference((int(t) + 0x9E3779B9 * (j + 1)) & MASK))
    return fmix_reference(seed ^ fmix_reference(int(token) ^ 0x27D4EB2F))


@pytest.mark.parametrize("key", [0, 7, 2**40 + 12345, 2**64 - 1])
def test_scores_equal_the_integer_reference_in_numpy_and_jax(key):
    w = Watermark(key=key, context=3)
    rng = np.random.default_rng(key % 1000)
    context = rng.integers(0, 129280, (5, 3))
    tokens = rng.integers(0, 129280, (5, 7))
    expected = np.array([[score_reference(key, c, t) for t in row] for c, row in zip(context, tokens)],
                        np.uint32)
    np.testing.assert_array_equal(w.scores(context, tokens), expected)
    np.testing.assert_array_equal(np.asarray(w.scores(jnp.asarray(context), jnp.asarray(tokens), xp=jnp)),
                                  expected)
    mask = np.asarray(w.green_mask(jnp.asarray(context), 64))
    np.testing.assert_array_equal(mask, w.scores(context, np.arange(64)[None]) < w.threshold)


def test_green_lists_hold_gamma_of_the_vocabulary_and_depend_on_key_and_context():
    w = Watermark(key=99, gamma=0.25, context=1)
    contexts = jnp.arange(200)[:, None]
    green = np.asarray(w.green_mask(contexts, 1000))
    assert abs(green.mean() - 0.25) < 0.01  # 200,000 independent bits: sd 0.001
    assert (green[0] != green[1]).any()
    other = np.asarray(Watermark(key=100, gamma=0.25, context=1).green_mask(contexts, 1000))
    assert 0.3 < (green != other).mean() < 0.45  # independent lists differ on 2 g (1 - g) = 37.5%


def green_text(w: Watermark, length: int, green: bool, start=(40,)):
    """Token ids where every token after the first h is green (or every one red) for w,
    choosing among the char tokenizer's characters and never repeating a (context, token) pair."""
    ids, used = list(start), set()
    letters = list(range(3, TOK.vocab_size))
    while len(ids) < length:
        context = ids[-w.context:]
        scores = w.scores(np.array(context), np.array(letters))
        for token, score in zip(letters, scores):
            if (score < w.threshold) == green and (tuple(context), token) not in used:
                used.add((tuple(context), token))
                ids.append(token)
                break
        else:
            raise AssertionError("no unused letter of that colour")
    return ids


@pytest.mark.parametrize("context", [1, 2])
def test_detector_on_all_green_and_all_red_texts(context):
    w = Watermark(key=2024, gamma=0.25, context=context)
    n = 60
    all_green = detect(green_text(w, n + context, True, start=(40,) * context), w)
    # T scored tokens all green: z = (T - gT) / sqrt(T g (1 - g)) = sqrt(T (1 - g) / g).
    assert (all_green.scored, all_green.green, all_green.tokens) == (n, n, n + context)
    assert all_green.z == pytest.approx(math.sqrt(n * 0.75 / 0.25), rel=1e-6)
    assert all_green.p_value < 1e-20
    all_red = detect(green_text(w, n + context, False, start=(40,) * context), w)
    # None green: z = -gT / sqrt(T g (1 - g)) = -sqrt(T g / (1 - g)).
    assert all_red.green == 0 and all_red.z == pytest.approx(-math.sqrt(n * 0.25 / 0.75), rel=1e-6)
    assert all_red.p_value > 0.99


def test_repeated_pairs_count_once():
    w = Watermark(key=5, gamma=0.5, context=1)
    text = TOK.encode("ab" * 50)  # only two (context, token) pairs: a->b and b->a
    once = detect(text, w)
    assert once.scored == 2 and once.tokens == 100
    every = detect(text, w, ignore_repeats=False)
    assert every.scored == 99
    # The pair colours decide everything: all tokens count with the colours of two pairs.
    a_b, b_a = (w.scores(np.array(TOK.encode(c)), np.array(TOK.encode(t)))[0] < w.threshold
                for c, t in (("a", "b"), ("b", "a")))
    assert once.green == int(a_b) + int(b_a)
    assert every.green == 50 * int(a_b) + 49 * int(b_a)


def test_too_short_texts_score_nothing():
    result = detect(TOK.encode("ab"), Watermark(key=1, context=2))
    assert result.scored == 0 and math.isnan(result.z) and math.isnan(result.p_value)


def test_the_key_matters():
    w = Watermark(key=31337, gamma=0.25, context=1)
    text = green_text(w, 121, True)
    assert detect(text, w).z > 10
    others = [detect(text, Watermark(key=k, gamma=0.25, context=1)).z for k in range(1, 101)]
    # Under another key the colours are independent of the text: z ~ N(0, 1).
    assert max(others) < 4.5 and abs(np.mean(others)) < 0.5
    assert detect(text, Watermark(key=31337, gamma=0.25, context=2)).z < 4.5  # and so does h


def test_p_value_is_the_normal_tail():
    assert p_value(0.0) == pytest.approx(0.5)
    assert p_value(3.090232) == pytest.approx(1e-3, rel=1e-4)


def test_bad_settings_name_the_field():
    for kwargs, field in ((dict(key=-2), "watermark.key"), (dict(key=2**64), "watermark.key"),
                          (dict(key=1, gamma=1.0), "watermark.gamma"),
                          (dict(key=1, delta=float("nan")), "watermark.delta"),
                          (dict(key=1, context=0), "watermark.context")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            Watermark(**kwargs)
    section = watermark_config()
    assert Watermark.from_config(section) is None and Watermark.from_config(None) is None
    section.enabled = True
    with pytest.raises(ConfigError, match="watermark.key"):  # -1: never set
        Watermark.from_config(section)
    section.key = 12
    assert Watermark.from_config(section) == Watermark(key=12)


# -- the sampler ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    """Random weights: nearly uniform next-token distributions, the most entropy there is."""
    return tiny_char_model()


def prompts(n):
    rows = np.full((n, 4), TOK.pad_id, np.int32)
    rows[:, 1:] = [[TOK.bos_id] + TOK.encode(f"{i % 10}+{i % 7}")[:2] for i in range(n)]
    return rows, np.full((n,), 3, np.int32)


def sampled(model, watermark, n=8, length=48, temperature=1.0, seed=0):
    m, params, router_bias = model
    tokens, lengths = prompts(n)
    return generate(m, params, router_bias, tokens, lengths, max_new_tokens=length,
                    rng=jax.random.PRNGKey(seed), temperature=temperature, pad_id=TOK.pad_id,
                    vocab_limit=TOK.vocab_size, watermark=watermark)


MARK = Watermark(key=77, gamma=0.25, delta=4.0, context=1)


@pytest.fixture(scope="module")
def draws(model):
    """(watermarked, plain) samples of the same prompts and rng."""
    return sampled(model, MARK), sampled(model, None)


def test_generate_draws_texts_the_detector_finds(draws):
    marked, plain = draws
    z_marked = [detect(row, MARK).z for row in np.asarray(marked["tokens"])]
    z_plain = [detect(row, MARK).z for row in np.asarray(plain["tokens"])]
    assert min(z_marked) > 4 and max(z_plain) < 3.5


def test_a_zero_delta_draws_what_no_watermark_draws(model, draws):
    unbiased = sampled(model, Watermark(key=77, gamma=0.25, delta=0.0, context=1))
    np.testing.assert_array_equal(unbiased["tokens"], draws[1]["tokens"])


def test_the_logprobs_stay_the_models(model, draws):
    """Scoring the watermarked tokens with a plain teacher-forced pass gives them back."""
    from moe_jax.infer.cache import init_cache
    from moe_jax.infer.generate import extend, prefill

    m, params, router_bias = model
    marked = draws[0]
    tokens, lengths = prompts(8)
    new = np.asarray(marked["tokens"])
    last, cache = prefill(m, params, router_bias, init_cache(m, 8, 4 + new.shape[1]), tokens, lengths)
    logits, _ = extend(m, params, router_bias, cache, new[:, :-1])
    logits = jnp.concatenate([last[:, None], logits], axis=1)  # [B, N, V]: what each draw saw
    logits = jnp.where(jnp.arange(logits.shape[-1]) < TOK.vocab_size, logits, -jnp.inf)
    expected = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), new[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(marked["logprobs"]), expected, atol=2e-4)


def test_greedy_with_a_large_delta_picks_only_green_tokens(model):
    w = Watermark(key=3, gamma=0.25, delta=50.0, context=2)
    out = np.asarray(sampled(model, w, temperature=0.0)["tokens"])
    tokens, _ = prompts(8)
    for prompt, row in zip(tokens, out):
        full = np.concatenate([prompt, row])
        context = np.lib.stride_tricks.sliding_window_view(full[:-1], 2)[-len(row):]
        assert (w.scores(context, row[:, None])[:, 0] < w.threshold).all()


def test_the_engine_draws_what_generate_draws_with_a_watermark(model):
    m, params, router_bias = model
    w = Watermark(key=8, gamma=0.5, delta=3.0, context=2)
    engine = Engine(m, params, router_bias, TOK, num_slots=2, context=32, watermark=w).start()
    try:
        prompt = (TOK.bos_id,) + tuple(TOK.encode("12+3"))
        result = engine.complete([Request(prompt, max_tokens=20, temperature=1.0, seed=11)], timeout=300)[0]
    finally:
        engine.stop()
    out = generate(m, params, router_bias, np.array([prompt]), np.array([len(prompt)]), max_new_tokens=20,
                   rng=jax.random.PRNGKey(11), temperature=1.0, stop_tokens=(TOK.eos_id,),
                   pad_id=TOK.pad_id, vocab_limit=TOK.vocab_size, watermark=w)
    n = int(out["lengths"][0])
    assert result["text"] == TOK.decode(np.asarray(out["tokens"][0, :n]).tolist())


def test_grpo_rollouts_are_drawn_with_the_watermark(model):
    from moe_jax.data.tasks import Example
    from moe_jax.rl.rollout import sample_groups

    m, params, router_bias = model
    w = Watermark(key=123, gamma=0.25, delta=4.0, context=1)
    examples = [Example(prompt=f"{i}+1=", solution="", answer=str(i + 1)) for i in range(2)]

    def reward_fn(examples, responses):
        return {"reward": np.zeros(len(responses), np.float32)}

    batch = sample_groups(m, params, router_bias, examples, TOK, reward_fn=reward_fn, group_size=4,
                          prompt_len=8, max_new_tokens=40, temperature=1.0, rng=jax.random.PRNGKey(1),
                          watermark=w)
    z = [detect(TOK.encode(r), w).z for r in batch["responses"] if r is not None and len(r) > 20]
    assert len(z) >= 4 and np.median(z) > 3
