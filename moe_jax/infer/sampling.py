"""Choosing the next token: greedy, temperature, top-k and top-p (nucleus) sampling.

Order as in common samplers: divide logits by the temperature, keep the k largest,
then keep the smallest set of most likely tokens whose probability reaches top_p.
temperature == 0 means greedy (argmax). In `sample_tokens` the settings are Python
numbers fixed at trace time (one setting for the batch); `sample_rows` takes one
temperature, top_p and rng key per row, as traced arrays, so a server can mix requests
with different settings in one compiled step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def filter_logits(logits, *, temperature=1.0, top_k: int = 0, top_p=1.0):
    """logits [B, V] float32 -> tempered logits with excluded tokens at -inf.

    temperature and top_p are numbers, or arrays [B, 1] (one per row); a row whose
    top_p is >= 1 keeps every token.
    """
    logits = logits.astype(jnp.float32) / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    per_row = not isinstance(top_p, (int, float))
    if per_row or top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # A token is kept when the tokens more likely than it hold less than top_p; the
        # most likely token is always kept.
        kept = mass_before < top_p
        threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        filtered = jnp.where(logits < threshold, -jnp.inf, logits)
        # The cumulative sum can round to >= 1 before the last token: top_p = 1 must not
        # drop the tail because of that.
        logits = jnp.where(top_p >= 1.0, logits, filtered) if per_row else filtered
    return logits


def limit_vocab(logits, vocab_limit: int | None):
    """logits [..., V] with ids >= vocab_limit (padding the table past the tokenizer's
    ids) at -inf, so they are never drawn; None: unchanged."""
    if vocab_limit is None:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)


def sample_tokens(logits, rng, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
    """logits [B, V] -> int32 [B]. One rng for the whole batch."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


def sample_rows(logits, keys, temperature, top_p):
    """logits [B, V], keys [B] (one rng key per row), temperature [B] (0 = greedy),
    top_p [B] -> int32 [B].

    Each row draws from its own key only, so its token does not depend on the other rows
    or on B: for one row it equals `sample_tokens(logits, key, ...)`, which draws noise of
    the same shape [1, V] from the same key.
    """
    temperature = jnp.asarray(temperature, jnp.float32)[:, None]  # [B, 1]
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    safe = jnp.where(temperature > 0, temperature, 1.0)
    filtered = filter_logits(logits, temperature=safe, top_p=jnp.asarray(top_p, jnp.float32)[:, None])
    drawn = jax.vmap(lambda key, row: jax.random.categorical(key, row[None], axis=-1)[0])(
        keys, filtered).astype(jnp.int32)
    return jnp.where(temperature[:, 0] > 0, drawn, greedy)


def top_logprobs(logits, n: int):
    """logits [B, V] -> (log-probs [B, n], token ids int32 [B, n]) of the n most likely
    tokens at temperature 1, most likely first."""
    values, ids = jax.lax.top_k(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), n)
    return values, ids.astype(jnp.int32)


def token_logprobs(logits, tokens):
    """log softmax(logits)[token] at temperature 1: logits [..., V], tokens [...] -> [...]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
