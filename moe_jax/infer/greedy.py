"""Greedy generation by re-running the full forward pass: simple and obviously right.

Used for evaluation before a cached sampler is available and as the reference the
cached sampler is tested against. Prompts are left-padded [B, P]; padding gets segment
id 0 so no real token attends to it, and positions start at 0 at each prompt's first
real token, exactly as in training.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("apply_fn", "max_new_tokens", "eos_id", "pad_id"))
def greedy_generate(apply_fn, variables, prompt_tokens, prompt_lengths, *, max_new_tokens: int,
                    eos_id: int, pad_id: int):
    """-> new tokens int32[B, max_new_tokens]; after <eos> a row holds pad_id.

    apply_fn(variables, tokens [B, T], positions [B, T], segment_ids [B, T]) -> logits [B, T, V].
    """
    batch, prompt_len = prompt_tokens.shape
    total = prompt_len + max_new_tokens
    tokens = jnp.concatenate(
        [prompt_tokens.astype(jnp.int32), jnp.full((batch, max_new_tokens), pad_id, jnp.int32)], axis=1)
    left_pad = prompt_len - prompt_lengths.astype(jnp.int32)  # [B]
    index = jnp.arange(total, dtype=jnp.int32)
    positions = jnp.maximum(index[None, :] - left_pad[:, None], 0)

    def step(i, carry):
        tokens, done = carry
        last = prompt_len - 1 + i  # the newest known token
        known = (index[None, :] >= left_pad[:, None]) & (index[None, :] <= last)
        logits = apply_fn(variables, tokens, positions, known.astype(jnp.int32))
        next_token = jnp.argmax(logits[:, last], axis=-1).astype(jnp.int32)
        next_token = jnp.where(done, pad_id, next_token)
        tokens = jax.lax.dynamic_update_slice(tokens, next_token[:, None], (0, last + 1))
        return tokens, done | (next_token == eos_id)

    tokens, _ = jax.lax.fori_loop(0, max_new_tokens, step, (tokens, jnp.zeros((batch,), bool)))
    return tokens[:, prompt_len:]
