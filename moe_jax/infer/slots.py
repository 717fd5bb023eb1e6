"""Decode slots: B independent rows over one MLA latent cache, for continuous batching.

A slot holds one request. Unlike `cache.KVCache` (left-padded rows that all write into
the same column), every slot keeps its own tokens from column 0 and its own length, so a
request's numbers do not depend on when it joined or on what the other rows hold:

    c_kv[name]    [n_layers, B, S + 1, kv_lora_rank]
    k_rope[name]  [n_layers, B, S + 1, qk_rope_head_dim]
    lengths       int32 [B]   tokens cached in the slot (prompt + generated so far)

S is the context (prompt + completion) a slot can hold. Column S is a scratch column:
`forward_with_cache` writes a step's new latents at one shared index, so a decode step
writes them there for every row, lets each row attend over its own columns
[0, lengths) plus the scratch, then moves the scratch into column `lengths[b]` of each
row. That keeps the model's decoding path unchanged.

Two jitted functions, compiled once per (slot count, context) and once per prompt bucket:

    slots, first = prefill_slot(m, params, router_bias, slots, slot, tokens[R, P], length,
                                sampling, vocab)
    slots, step  = decode_slots(m, params, router_bias, slots, tokens[B], active[B], sampling,
                                vocab)

`sampling` is a `SlotSampling` of per-row arrays (temperature, top_p, rng key, how many
tokens the row has drawn): the token of draw i uses fold_in(key, i), as `generate` does
for its step i, so a request sampled alone with seed s gets what `generate` gets for the
same prompt and rng (with a watermark too: `sampling.context` then carries each row's
last h tokens, which `generate` keeps on the device). Only ids below `vocab` (the tokenizer's size; the model's table
may be padded past it) are drawn. Both return a `Draw`: token, its log-prob at temperature 1 and the
TOP_LOGPROBS most likely tokens with theirs.

Under a sampling mesh (moe_jax.infer.rows: the engine runs inside a placement's
`generation()`) the slots' rows stay split over the batch axes from call to call, as
`init_slots` creates them; a prefill's one prompt is then given as R copies (rows.py's
padding, R the row shards), so its tokens split over the devices like any batch's.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp

from moe_jax.infer.rows import constrain_rows
from moe_jax.infer.sampling import sample_rows, token_logprobs, top_logprobs
from moe_jax.infer.watermark import Watermark
from moe_jax.models.transformer import forward_with_cache, layer_stacks

TOP_LOGPROBS = 5  # the most `logprobs` alternatives a request may ask for (as OpenAI allows)


@flax.struct.dataclass
class SlotCache:
    c_kv: dict
    k_rope: dict
    lengths: jax.Array

    @property
    def context(self) -> int:
        """S: tokens a slot can hold (the scratch column excluded)."""
        return next(iter(self.c_kv.values())).shape[2] - 1

    @property
    def num_slots(self) -> int:
        return self.lengths.shape[0]


class SlotSampling(NamedTuple):
    """Per-row sampling state; every field has a leading row axis [B]."""

    temperature: jax.Array  # float32, 0 = greedy
    top_p: jax.Array  # float32
    key: jax.Array  # uint32 [B, 2] raw PRNG keys (jax.random.PRNGKey(seed))
    drawn: jax.Array  # int32: tokens already drawn for the row's request
    # int32 [B, h]: the row's last h tokens (prompt + drawn), what a watermark hashes;
    # None without a watermark.
    context: jax.Array | None = None


class Draw(NamedTuple):
    token: jax.Array  # int32 [B]
    logprob: jax.Array  # float32 [B]
    top_logprobs: jax.Array  # float32 [B, TOP_LOGPROBS]
    top_tokens: jax.Array  # int32 [B, TOP_LOGPROBS]


def init_slots(model_config, num_slots: int, context: int, dtype=None) -> SlotCache:
    """Empty slots for `num_slots` requests of up to `context` tokens each; under a
    sampling mesh, created split over its batch axes (never whole on one device)."""
    return _empty_slots(model_config, num_slots, context, jnp.dtype(dtype or model_config.dtype).name)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _empty_slots(m, num_slots: int, context: int, dtype: str) -> SlotCache:
    c_kv, k_rope = {}, {}
    for name, _, count in layer_stacks(m):
        c_kv[name] = jnp.zeros((count, num_slots, context + 1, m.kv_lora_rank), dtype)
        k_rope[name] = jnp.zeros((count, num_slots, context + 1, m.qk_rope_head_dim), dtype)
    return _keep_split(SlotCache(c_kv=c_kv, k_rope=k_rope, lengths=jnp.zeros((num_slots,), jnp.int32)))


def _keep_split(slots: SlotCache) -> SlotCache:
    """The slots' row axis over the batch axes of the sampling mesh (see rows.py)."""
    return SlotCache(c_kv={k: constrain_rows(v, 1) for k, v in slots.c_kv.items()},
                     k_rope={k: constrain_rows(v, 1) for k, v in slots.k_rope.items()},
                     lengths=constrain_rows(slots.lengths))


def _draw(logits, sampling: SlotSampling, vocab: int, watermark: Watermark | None) -> Draw:
    # Ids from `vocab` up pad the embedding table past the tokenizer: never drawn.
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab, logits, -jnp.inf)
    keys = jax.vmap(jax.random.fold_in)(sampling.key, sampling.drawn)
    drawn_from = logits if watermark is None else watermark.bias(logits, sampling.context)
    token = sample_rows(drawn_from, keys, sampling.temperature, sampling.top_p)
    values, ids = top_logprobs(logits, TOP_LOGPROBS)
    return Draw(token, token_logprobs(logits, token), values, ids)


@functools.partial(jax.jit, static_argnums=(0, 8), static_argnames="watermark", donate_argnums=3)
def prefill_slot(m, params, router_bias, slots: SlotCache, slot, tokens, length,
                 sampling: SlotSampling, vocab: int, *, watermark: Watermark | None = None):
    """Prefill one prompt into `slot` and draw its first token.

    tokens [R, P]: the prompt right-padded to a bucket length P <= S, in R identical rows
    (R = 1, or the row shards of a mesh); length: its real tokens; sampling: that
    request's SlotSampling with a row axis of R. The padding is masked (segment 0), so
    any bucket gives the same prompt latents. watermark: draw with its bias
    (sampling.context then holds the prompt's last h tokens). -> (slots, Draw [R]), its
    rows identical.
    """
    rows, prompt_len = tokens.shape
    index = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32)[None, :], (rows, prompt_len))
    real = index < length
    caches = {name: (jnp.zeros((count, rows, prompt_len, m.kv_lora_rank), slots.c_kv[name].dtype),
                     jnp.zeros((count, rows, prompt_len, m.qk_rope_head_dim), slots.k_rope[name].dtype))
              for name, _, count in layer_stacks(m)}
    logits, caches = forward_with_cache(m, params, router_bias, tokens.astype(jnp.int32), index,
                                        real.astype(jnp.int32), caches, jnp.zeros((), jnp.int32),
                                        real, prefill=True)
    last = jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False)  # [R, V]
    at = (0, slot, 0, 0)
    c_kv = {k: jax.lax.dynamic_update_slice(slots.c_kv[k], v[0][:, :1], at) for k, v in caches.items()}
    k_rope = {k: jax.lax.dynamic_update_slice(slots.k_rope[k], v[1][:, :1], at) for k, v in caches.items()}
    slots = SlotCache(c_kv=c_kv, k_rope=k_rope, lengths=slots.lengths.at[slot].set(length))
    return _keep_split(slots), _draw(last, sampling, vocab, watermark)


@functools.partial(jax.jit, static_argnums=(0, 7), static_argnames="watermark", donate_argnums=3)
def decode_slots(m, params, router_bias, slots: SlotCache, tokens, active, sampling: SlotSampling,
                 vocab: int, *, watermark: Watermark | None = None):
    """Append tokens [B] to the active rows (bool [B]) and draw each row's next token.

    Inactive rows run too (the step has one shape) but their lengths do not move; what
    they compute is never read. -> (slots, Draw [B]).
    """
    scratch = slots.context
    columns = jnp.arange(scratch + 1, dtype=jnp.int32)[None, :]  # [1, S + 1]
    valid = (columns < slots.lengths[:, None]) | (columns == scratch)  # [B, S + 1]
    caches = {k: (slots.c_kv[k], slots.k_rope[k]) for k in slots.c_kv}
    logits, caches = forward_with_cache(
        m, params, router_bias, tokens.astype(jnp.int32)[:, None], slots.lengths[:, None],
        jnp.ones((tokens.shape[0], 1), jnp.int32), caches, jnp.asarray(scratch, jnp.int32),
        valid, prefill=False)
    rows = jnp.arange(tokens.shape[0])
    # A full inactive row would write into the scratch column itself: harmless.
    column = jnp.minimum(slots.lengths, scratch)

    def settle(array):  # [n, B, S + 1, X]: scratch column -> column `lengths[b]` of row b
        return array.at[:, rows, column].set(array[:, :, scratch])

    slots = SlotCache(c_kv={k: settle(v[0]) for k, v in caches.items()},
                      k_rope={k: settle(v[1]) for k, v in caches.items()},
                      lengths=slots.lengths + active.astype(jnp.int32))
    return _keep_split(slots), _draw(logits[:, 0], sampling, vocab, watermark)
