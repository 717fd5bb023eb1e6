"""Jitted prefill, decode step and batched generation over the MLA latent cache.

    cache = init_cache(model_config, B, P + N)
    logits_last, cache = prefill(model_config, params, router_bias, cache, prompts, lengths)
    logits, cache = decode_step(model_config, params, router_bias, cache, next_tokens)

or all at once, in one jit with a `lax.while_loop` that stops when every row is done:

    out = generate(model_config, params, router_bias, prompts, lengths, max_new_tokens=N,
                   rng=key, temperature=0.7, top_p=0.95, stop_tokens=(eos,), pad_id=pad)
    out["tokens"] [B, N], out["lengths"] [B], out["logprobs"] [B, N], out["finished"] [B]

Prompts are left-padded [B, P] (see cache.py). MoE layers run with a dispatch that
never drops a token (`inference_config`), so a row's output does not depend on what
else is in the batch. MTP modules are not used. Under a mesh (jax.set_mesh) `generate`
splits its rows over the batch axes and returns every row to every process (rows.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_jax.infer.cache import KVCache, init_cache
from moe_jax.infer.rows import gather_rows, place_rows, sampling_context
from moe_jax.infer.sampling import limit_vocab, sample_tokens, token_logprobs
from moe_jax.infer.watermark import Watermark, initial_context, shift_context
from moe_jax.models.transformer import forward_with_cache


def inference_config(model_config) -> ml_collections.FrozenConfigDict:
    """The model config with a never-dropping dispatch, frozen (hashable, for jit).

    A dropped token at inference silently changes an answer; generation batches are small.
    """
    from moe_jax.moe.dispatch import ENGINES

    if isinstance(model_config, ml_collections.FrozenConfigDict):
        config = model_config.as_configdict()
    else:
        config = model_config.copy_and_resolve_references()
    config.dispatch = "dropless" if "dropless" in ENGINES else "reference"
    return ml_collections.FrozenConfigDict(config)


def _frozen(model_config):
    if isinstance(model_config, ml_collections.FrozenConfigDict) and model_config.dispatch in (
            "dropless", "reference"):
        return model_config
    return inference_config(model_config)


def prefill_details(m, params, router_bias, cache: KVCache, prompt_tokens, prompt_lengths):
    """Traced prefill -> (logits [B, P, V], cache, details of `forward_with_cache`)."""
    batch, prompt_len = prompt_tokens.shape
    lengths = prompt_lengths.astype(jnp.int32)
    index = jnp.arange(prompt_len, dtype=jnp.int32)[None, :]
    left_pad = prompt_len - lengths[:, None]
    real = index >= left_pad  # [B, P]
    positions = jnp.maximum(index - left_pad, 0)
    cache = cache.replace(lengths=lengths, index=jnp.asarray(prompt_len, jnp.int32))
    logits, arrays, details = forward_with_cache(
        m, params, router_bias, prompt_tokens.astype(jnp.int32), positions, real.astype(jnp.int32),
        cache.arrays(), jnp.zeros((), jnp.int32), cache.valid(prompt_len), prefill=True, details=True)
    cache = cache.replace(c_kv={k: v[0] for k, v in arrays.items()},
                          k_rope={k: v[1] for k, v in arrays.items()})
    return logits, cache, details


@functools.partial(jax.jit, static_argnums=0)
def _prefill(m, params, router_bias, cache: KVCache, prompt_tokens, prompt_lengths):
    return prefill_details(m, params, router_bias, cache, prompt_tokens, prompt_lengths)[:2]


def prefill(model_config, params, router_bias, cache: KVCache, prompt_tokens, prompt_lengths,
            *, all_logits: bool = False):
    """Fill an empty cache with left-padded prompts [B, P] of `prompt_lengths` [B] tokens.

    -> (logits of the last prompt token [B, V] float32 (all positions [B, P, V] with
    all_logits), cache holding P slots). Rows with length 0 are allowed and masked.
    """
    logits, cache = _prefill(_frozen(model_config), params, router_bias or {}, cache,
                             jnp.asarray(prompt_tokens), jnp.asarray(prompt_lengths))
    return (logits if all_logits else logits[:, -1]), cache


def _extend_details(m, params, router_bias, cache: KVCache, tokens):
    new = tokens.shape[1]
    positions = cache.lengths[:, None] + jnp.arange(new, dtype=jnp.int32)[None, :]
    segment_ids = jnp.ones(tokens.shape, jnp.int32)
    logits, arrays, details = forward_with_cache(
        m, params, router_bias, tokens.astype(jnp.int32), positions, segment_ids, cache.arrays(),
        cache.index, cache.valid(cache.index + new), prefill=False, details=True)
    cache = cache.replace(c_kv={k: v[0] for k, v in arrays.items()},
                          k_rope={k: v[1] for k, v in arrays.items()},
                          lengths=cache.lengths + new, index=cache.index + new)
    return logits, cache, details


@functools.partial(jax.jit, static_argnums=0)
def _extend(m, params, router_bias, cache: KVCache, tokens):
    return _extend_details(m, params, router_bias, cache, tokens)[:2]


def extend(model_config, params, router_bias, cache: KVCache, tokens):
    """Append tokens [B, T] to every row (absorbed attention over the cache).

    -> (logits [B, T, V], cache). The caller keeps index + T <= the cache's max_len.
    """
    return _extend(_frozen(model_config), params, router_bias or {}, cache, jnp.asarray(tokens))


def decode_step(model_config, params, router_bias, cache: KVCache, tokens):
    """One token per row, tokens [B] -> (logits [B, V] float32, cache one slot longer)."""
    logits, cache = extend(model_config, params, router_bias, cache, jnp.asarray(tokens)[:, None])
    return logits[:, 0], cache


GENERATE_STATIC = ("m", "max_new_tokens", "temperature", "top_k", "top_p", "stop_tokens", "pad_id",
                   "cache_dtype", "vocab_limit", "record_experts")


def stopped(token, stop_tokens) -> jax.Array:
    """bool [B]: token [B] is one of the stop tokens."""
    if not stop_tokens:
        return jnp.zeros(token.shape, bool)
    return jnp.any(token[:, None] == jnp.asarray(stop_tokens, jnp.int32)[None, :], axis=-1)


def expert_record(prompt_experts, max_new_tokens: int):
    """The rollout's experts: int32 [B, P + N, M, K], the prompt's filled in from prefill
    ([B, P, M, K]); each fed token's are written at its column as decoding goes."""
    batch, prompt_len, layers, top_k = prompt_experts.shape
    record = jnp.zeros((batch, prompt_len + max_new_tokens, layers, top_k), jnp.int32)
    return record.at[:, :prompt_len].set(prompt_experts)


@functools.partial(jax.jit, static_argnames=GENERATE_STATIC + ("watermark",))
def _generate(params, router_bias, prompt_tokens, prompt_lengths, rng, *, m, max_new_tokens,
              temperature, top_k, top_p, stop_tokens, pad_id, cache_dtype, vocab_limit, record_experts,
              watermark=None):
    batch, prompt_len = prompt_tokens.shape
    cache = init_cache(m, batch, prompt_len + max_new_tokens, cache_dtype)
    logits, cache, details = prefill_details(m, params, router_bias, cache, prompt_tokens, prompt_lengths)

    def choose(step, logits, done, context):
        """Sample from logits [B, V]; rows already done get pad_id and log-prob 0.
        context [B, h]: the tokens the watermark hashes (None without one)."""
        logits = limit_vocab(logits, vocab_limit)
        drawn_from = logits if watermark is None else watermark.bias(logits, context)
        token = sample_tokens(drawn_from, jax.random.fold_in(rng, step), temperature=temperature,
                              top_k=top_k, top_p=top_p)
        logprob = token_logprobs(logits, token)  # the model's own, watermark or not
        token = jnp.where(done, pad_id, token)
        logprob = jnp.where(done, 0.0, logprob)
        return token, logprob, done | stopped(token, stop_tokens)

    tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    logprobs = jnp.zeros((batch, max_new_tokens), jnp.float32)
    done = jnp.zeros((batch,), bool)
    context = None if watermark is None else initial_context(prompt_tokens, watermark.context, pad_id)
    token, logprob, new_done = choose(0, logits[:, -1], done, context)
    tokens, logprobs = tokens.at[:, 0].set(token), logprobs.at[:, 0].set(logprob)
    lengths = jnp.ones((batch,), jnp.int32)
    experts = expert_record(details["expert_index"], max_new_tokens) if record_experts else None

    def cond(state):
        step, _, _, _, _, done, _, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, cache, token, tokens, logprobs, done, lengths, experts, context = state
        logits, cache, details = _extend_details(m, params, router_bias, cache, token[:, None])
        if record_experts:  # the token fed now is response token step - 1
            experts = jax.lax.dynamic_update_slice(experts, details["expert_index"],
                                                   (0, prompt_len + step - 1, 0, 0))
        context = None if context is None else shift_context(context, token)
        token, logprob, new_done = choose(step, logits[:, 0], done, context)
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, step))
        logprobs = jax.lax.dynamic_update_slice(logprobs, logprob[:, None], (0, step))
        lengths = lengths + (~done).astype(jnp.int32)
        return step + 1, cache, token, tokens, logprobs, new_done, lengths, experts, context

    state = (jnp.ones((), jnp.int32), cache, token, tokens, logprobs, new_done, lengths, experts, context)
    _, _, _, tokens, logprobs, done, lengths, experts, _ = jax.lax.while_loop(cond, body, state)
    out = {"tokens": tokens, "lengths": lengths, "logprobs": logprobs, "finished": done}
    if record_experts:
        out["expert_index"] = experts
    return out


def generate(model_config, params, router_bias, prompt_tokens, prompt_lengths, *,
             max_new_tokens: int, rng=None, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, stop_tokens=(), pad_id: int = 0, cache_dtype=None,
             vocab_limit: int | None = None, record_experts: bool = False,
             speculative: bool = False, watermark: Watermark | None = None):
    """Sample up to `max_new_tokens` per left-padded prompt, all in one jit.

    Returns a dict:
      tokens   int32 [B, N]   new tokens; after a stop token (kept) a row holds pad_id
      lengths  int32 [B]      new tokens per row, the stop token included
      logprobs float32 [B, N] log-prob of each chosen token under the model at
                              temperature 1, no top-k/top-p (what GRPO needs); 0 after done
      finished bool [B]       the row produced a stop token
    temperature 0 is greedy; the same rng gives the same tokens. vocab_limit: draw only
    ids below it (the tokenizer's size, when the embedding table is padded past it), as
    the serving engine does; None draws from the whole table, as evaluation does, where
    an id no tokenizer can decode counts as a wrong answer.

    record_experts adds "expert_index" int32 [B, P + N, M, K]: the experts each of the M
    main MoE layers chose for every prompt token and every fed response token (column
    P + j is response token j; a row's columns past its last fed token hold zeros), which
    routing replay hands to the policy update. speculative: draft each next token with
    the first MTP module and verify it with the main model (moe_jax.infer.speculative):
    greedy tokens as plain decoding's, sampled ones from the same distribution, and two
    more outputs, "draft_proposed" and "draft_accepted" int32 [B]. watermark: draw with
    its green-list bias (moe_jax.infer.watermark; the first draw hashes the prompt's last
    tokens); the log-probs stay the model's.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if rng is None:
        rng = jax.random.PRNGKey(0)
    frozen = _frozen(model_config)
    if record_experts and frozen.num_layers == frozen.num_dense_layers:
        raise ValueError("record_experts: the model has no MoE layer")
    run = functools.partial(_generate, watermark=watermark)
    if speculative:
        if watermark is not None:
            # The acceptance rule would have to use the biased distribution on both sides.
            raise ValueError("speculative decoding with a watermark is not supported: pass one of them")
        # Imported here: the speculative sampler builds on this module's prefill.
        from moe_jax.infer.speculative import check_speculative, speculative_generate

        check_speculative(frozen)
        run = speculative_generate
    rows, (prompt_tokens, prompt_lengths) = place_rows(np.asarray(prompt_tokens, np.int32),
                                                       np.asarray(prompt_lengths, np.int32))
    with sampling_context():
        out = run(params, router_bias or {}, jnp.asarray(prompt_tokens, jnp.int32),
                  jnp.asarray(prompt_lengths, jnp.int32), rng, m=frozen,
                  max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                  top_k=int(top_k), top_p=float(top_p),
                  stop_tokens=tuple(int(t) for t in stop_tokens), pad_id=int(pad_id),
                  cache_dtype=None if cache_dtype is None else jnp.dtype(cache_dtype).name,
                  vocab_limit=None if vocab_limit is None else int(vocab_limit),
                  record_experts=bool(record_experts))
    return gather_rows(out, rows) if rows != out["tokens"].shape[0] or _sharded(out) else out


def _sharded(out) -> bool:
    return not out["tokens"].is_fully_addressable or len(out["tokens"].sharding.device_set) > 1
