"""Cached decoding against the full forward pass (the reference) and greedy.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.infer.cache import cache_bytes_per_token, init_cache, left_pad, mha_cache_bytes_per_token
from moe_jax.infer.generate import decode_step, extend, generate, prefill
from moe_jax.infer.greedy import greedy_generate

PAD = 0
B, P, N = 3, 6, 5
N_GEN = 8  # tokens generated in the generation tests
LENGTHS = np.array([6, 2, 4])  # different prompt lengths; row 0 has no padding


@pytest.fixture(scope="module")
def setup(tiny_model):
    m, model, params = tiny_model["m"], tiny_model["model"], tiny_model["params"]
    assert m.num_dense_layers == 1 and m.num_layers == 2  # a dense and an MoE stack
    # Non-zero balancing biases, so that a decode path that ignored them would show.
    bias = jax.tree.map(lambda b: 0.5 * jax.random.normal(jax.random.PRNGKey(3), b.shape),
                        tiny_model["router_bias"])
    # Left-padded rows of different lengths, continued by N more tokens.
    tokens = np.array(jax.random.randint(jax.random.PRNGKey(1), (B, P + N), 3, m.vocab_size))
    left = P - LENGTHS
    index = np.arange(P + N)
    tokens[index[None] < left[:, None]] = PAD
    positions = np.maximum(index[None] - left[:, None], 0)
    segments = (index[None] >= left[:, None]).astype(np.int32)
    forward = jax.jit(lambda v, t, p, g: model.apply(v, t, p, g)[0])  # the full forward pass
    reference = forward({"params": params, "router_bias": bias}, tokens, positions, segments)
    return dict(m=m, model=model, forward=forward, params=params, bias=bias, tokens=tokens,
                segments=segments, reference=np.asarray(reference))


def test_cached_decoding_reproduces_full_forward_logits(setup):
    s = setup
    m, tokens = s["m"], s["tokens"]
    real = s["segments"][..., None].astype(bool)
    cache = init_cache(m, B, P + N, jnp.float32)
    logits, cache = prefill(m, s["params"], s["bias"], cache, tokens[:, :P], LENGTHS, all_logits=True)
    # Prefill (decompressed attention over the prompt) at every real prompt position.
    np.testing.assert_allclose(np.where(real[:, :P], logits, 0),
                               np.where(real[:, :P], s["reference"][:, :P], 0), atol=1e-5)
    np.testing.assert_array_equal(cache.lengths, LENGTHS)
    # A chunk of 2 tokens, then single steps: absorbed attention over the cached latents.
    chunk, cache = extend(m, s["params"], s["bias"], cache, tokens[:, P:P + 2])
    np.testing.assert_allclose(chunk, s["reference"][:, P:P + 2], atol=1e-5)
    for t in range(P + 2, P + N):
        step_logits, cache = decode_step(m, s["params"], s["bias"], cache, tokens[:, t])
        np.testing.assert_allclose(step_logits, s["reference"][:, t], atol=1e-5)
    np.testing.assert_array_equal(cache.lengths, LENGTHS + N)
    assert int(cache.index) == P + N


def _stop_token_for_some_rows(tokens):
    """A token that some rows of `tokens` [B, N] produce and others never do."""
    for candidate in tokens.reshape(-1):
        rows = (tokens == candidate).any(axis=1)
        if rows.any() and not rows.all():
            return int(candidate)
    raise AssertionError(f"every row produces the same tokens: {tokens}")


def test_unscanned_layers_decode_the_same(setup):
    """scan_layers=False names layers dense_layers_0, ...; the cache layout is the same."""
    s = setup
    m = s["m"].as_configdict()
    m.scan_layers = False
    per_layer = lambda tree: {f"{name}_{i}": jax.tree.map(lambda x: x[i], sub)  # noqa: E731
                              for name, sub in tree.items() if name.endswith("_layers")
                              for i in range(jax.tree.leaves(sub)[0].shape[0])}
    params = {k: v for k, v in s["params"].items() if not k.endswith("_layers")}
    params.update(per_layer(s["params"]))
    bias = per_layer(s["bias"])
    cache = init_cache(m, B, P + 1)
    last, cache = prefill(m, params, bias, cache, s["tokens"][:, :P], LENGTHS)
    np.testing.assert_allclose(last, s["reference"][:, P - 1], atol=1e-5)
    step, cache = decode_step(m, params, bias, cache, s["tokens"][:, P])
    np.testing.assert_allclose(step, s["reference"][:, P], atol=1e-5)


def test_greedy_generation_equals_full_recompute_reference(setup):
    s = setup
    m, params, bias, prompts = s["m"], s["params"], s["bias"], s["tokens"][:, :P]
    variables = {"params": params, "router_bias": bias}
    apply_fn = lambda v, t, p, g: s["model"].apply(v, t, p, g)[0]  # noqa: E731
    free = np.asarray(generate(m, params, bias, prompts, LENGTHS, max_new_tokens=N_GEN,
                               pad_id=PAD)["tokens"])
    # Stop on a token only some rows produce, so stopped and running rows both occur.
    stop = _stop_token_for_some_rows(free)
    expected = np.asarray(greedy_generate(apply_fn, variables, prompts, LENGTHS,
                                          max_new_tokens=N_GEN, eos_id=stop, pad_id=PAD))
    out = generate(m, params, bias, prompts, LENGTHS, max_new_tokens=N_GEN, stop_tokens=(stop,),
                   pad_id=PAD)
    np.testing.assert_array_equal(out["tokens"], expected)
    stopped = (expected == stop).any(axis=1)
    stop_at = np.where(stopped, np.argmax(expected == stop, axis=1) + 1, N_GEN)
    np.testing.assert_array_equal(out["lengths"], stop_at)
    np.testing.assert_array_equal(out["finished"], stopped)
    # Log-probs of the chosen tokens: those of the full forward pass on the result, 0 after done.
    full = np.concatenate([prompts, expected], axis=1)
    left = P - LENGTHS
    index = np.arange(full.shape[1])
    logits = s["forward"](variables, full, np.maximum(index[None] - left[:, None], 0),
                          (index[None] >= left[:, None]).astype(np.int32))
    logp = np.asarray(jax.nn.log_softmax(logits[:, P - 1:-1], axis=-1))
    want = np.take_along_axis(logp, expected[..., None], axis=-1)[..., 0]
    want = np.where(np.arange(N_GEN)[None] < stop_at[:, None], want, 0.0)
    np.testing.assert_allclose(out["logprobs"], want, atol=1e-5)


def test_sampling_is_deterministic_per_seed(setup):
    s = setup
    run = lambda seed, **kw: generate(  # noqa: E731
        s["m"], s["params"], s["bias"], s["tokens"][:, :P], LENGTHS, max_new_tokens=N_GEN,
        rng=jax.random.PRNGKey(seed), temperature=1.0, pad_id=PAD, **kw)["tokens"]
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


def test_cache_bytes_per_token_are_latent_plus_rope_key(setup):
    m = setup["m"]
    for dtype in (jnp.float32, jnp.bfloat16):
        cache = init_cache(m, batch=2, max_len=10, dtype=dtype)
        arrays = list(cache.c_kv.values()) + list(cache.k_rope.values())
        per_token = sum(a.nbytes for a in arrays) / (2 * 10)
        # (kv_lora_rank 16 + rope 4) x 2 layers x itemsize
        assert per_token == (16 + 4) * 2 * jnp.dtype(dtype).itemsize == cache_bytes_per_token(m, dtype)
        assert {a.shape[:3] for a in cache.c_kv.values()} == {(1, 2, 10)}  # [layers, B, S, L]


def test_deepseek_v3_cache_sizes_by_arithmetic():
    from moe_jax.config import load_config

    m = load_config("configs/deepseek_v3.py").model
    assert cache_bytes_per_token(m, "bfloat16") == (512 + 64) * 61 * 2 == 70_272
    # Full keys (128 + 64) and values (128) for each of 128 heads: 4,997,120 bytes, 71x more.
    assert mha_cache_bytes_per_token(m, "bfloat16") == (192 + 128) * 128 * 61 * 2 == 4_997_120


def test_left_pad_moves_tokens_to_the_end():
    out = left_pad(np.array([[5, 6, 0, 0], [7, 8, 9, 1]]), np.array([2, 4]), pad_id=0)
    np.testing.assert_array_equal(out, [[0, 0, 5, 6], [7, 8, 9, 1]])
