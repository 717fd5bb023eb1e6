"""Choosing the next token: greedy, temperature, top-k and top-p (nucleus) sampling.

Order as in common samplers: divide logits by the temperature, keep the k largest,
then keep the smallest set of most likely tokens whose probability reaches top_p.
temperature == 0 means greedy (argmax). Settings are Python numbers, fixed at trace time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def filter_logits(logits, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """logits [B, V] float32 -> tempered logits with excluded tokens at -inf."""
    logits = logits.astype(jnp.float32) / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # A token is kept when the tokens more likely than it hold less than top_p; the
        # most likely token is always kept.
        kept = mass_before < top_p
        threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def sample_tokens(logits, rng, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
    """logits [B, V] -> int32 [B]. One rng for the whole batch."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


def token_logprobs(logits, tokens):
    """log softmax(logits)[token] at temperature 1: logits [..., V], tokens [...] -> [...]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
