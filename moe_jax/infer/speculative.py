"""Speculative decoding with the model's own multi-token-prediction module.

DeepSeek-V3 trains an MTP module that reads the main model's last hidden state h(i) at
position i and the embedding of token i+1 and predicts token i+2. At decode time that is
a draft model for free: with the next token t already chosen, the module proposes d for
the token after it, and the main model scores [t, d] in one forward over the MLA cache,
which gives the distribution at d's position (to judge d) and the one after it (a bonus
token when d is kept). Each such verify step emits one or two tokens.

Acceptance (Leviathan et al. 2023; Chen et al. 2023): with p the main model's and q the
draft's distribution at d's position (both after temperature, top-k, top-p and the vocab
limit), keep d with probability min(1, p(d) / q(d)); on rejection draw from the residual
norm(max(p - q, 0)). The emitted token is then distributed exactly as p, so sampling is
unchanged in distribution; at temperature 0 d is kept iff it is p's argmax, so greedy
output is plain greedy decoding's.

Rows accept different numbers of drafts, while the cache writes every row's new tokens
at one shared slot (cache.py). So each verify step takes two slots for every row, and a
rejected draft's slot simply stays invalid (masked from attention forever): positions
come from each row's own count of real tokens, not from the slot, so a hole changes
nothing. The cache therefore holds P + 2N slots. The MTP module keeps its own one-layer
cache on the same slots: after each verify step it runs over the two slots with the
main model's hidden states and the tokens that follow them, and its output at the last
kept slot is the next draft.

Shapes: B rows, P prompt slots, N new tokens, S = P + 2N cache slots, V vocabulary,
M main MoE layers, K experts per token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from moe_jax.infer.cache import init_cache
from moe_jax.infer.generate import GENERATE_STATIC, expert_record, prefill_details, stopped
from moe_jax.infer.sampling import filter_logits, limit_vocab, token_logprobs
from moe_jax.models.transformer import forward_with_cache, mtp_with_cache


def check_speculative(m) -> None:
    if m.mtp_depth < 1:
        raise ValueError(f"speculative decoding drafts with the MTP module: model.mtp_depth = "
                         f"{m.mtp_depth}, expected >= 1 (a model trained with multi-token prediction)")


def _target(logits, temperature, top_k, top_p, vocab_limit):
    """The distribution tokens are drawn from, as logits [B, V] (-inf where excluded)."""
    logits = limit_vocab(logits.astype(jnp.float32), vocab_limit)
    if temperature == 0.0:
        return logits
    return filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)


def _draw(logits, key, temperature):
    """One token per row from target logits [B, V]: argmax at temperature 0."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def accept_or_correct(p_logits, q_logits, draft, key, temperature):
    """The speculative-sampling rule at the draft's position.

    p_logits, q_logits [B, V]: target logits of the main model and of the draft; draft
    [B] was drawn from q. -> (accepted bool [B], correction int32 [B]: the token to emit
    instead when rejected, drawn from norm(max(p - q, 0))). Greedy: kept iff it is p's
    argmax, else the argmax.
    """
    if temperature == 0.0:
        best = jnp.argmax(p_logits, axis=-1).astype(jnp.int32)
        return best == draft, best
    accept_key, residual_key = jax.random.split(key)
    p = jax.nn.softmax(p_logits, axis=-1)
    q = jax.nn.softmax(q_logits, axis=-1)
    p_d = jnp.take_along_axis(p, draft[:, None], axis=-1)[:, 0]
    q_d = jnp.take_along_axis(q, draft[:, None], axis=-1)[:, 0]
    u = jax.random.uniform(accept_key, draft.shape)
    accepted = u * q_d < p_d  # u < p(d)/q(d), without dividing by a tiny q(d)
    residual = jnp.maximum(p - q, 0.0)
    # p == q leaves no residual, but then every draft is accepted: any fallback will do.
    has_mass = jnp.sum(residual, axis=-1, keepdims=True) > 0
    residual_logits = jnp.where(has_mass, jnp.log(jnp.where(residual > 0, residual, 1.0)), p_logits)
    residual_logits = jnp.where(has_mass & (residual <= 0), -jnp.inf, residual_logits)
    correction = jax.random.categorical(residual_key, residual_logits, axis=-1).astype(jnp.int32)
    return accepted, correction


@functools.partial(jax.jit, static_argnames=GENERATE_STATIC)
def speculative_generate(params, router_bias, prompt_tokens, prompt_lengths, rng, *, m,
                         max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id,
                         cache_dtype, vocab_limit, record_experts):
    """`generate`'s outputs (same arguments), with drafts from the first MTP module."""
    batch, prompt_len = prompt_tokens.shape
    n = max_new_tokens
    slots = prompt_len + 2 * n
    target = functools.partial(_target, temperature=temperature, top_k=top_k, top_p=top_p,
                               vocab_limit=vocab_limit)
    cache = init_cache(m, batch, slots, cache_dtype)
    logits, cache, details = prefill_details(m, params, router_bias, cache, prompt_tokens, prompt_lengths)
    valid = cache.valid(prompt_len)  # [B, S]
    lengths = cache.lengths  # real tokens cached per row: the next token's position

    # The first token comes from the prompt's last position, as in plain decoding.
    first_logits = target(logits[:, -1])
    pending = _draw(first_logits, jax.random.fold_in(rng, 0), temperature)  # chosen, not yet cached
    tokens = jnp.full((batch, n), pad_id, jnp.int32).at[:, 0].set(pending)
    first_lp = token_logprobs(limit_vocab(logits[:, -1], vocab_limit), pending)
    logprobs = jnp.zeros((batch, n), jnp.float32).at[:, 0].set(first_lp)
    count = jnp.ones((batch,), jnp.int32)  # tokens emitted per row
    finished = stopped(pending, stop_tokens)
    done = finished | (count >= n)

    # The MTP module over the prompt: at slot j it reads h(j) and the token after it (the
    # next prompt token, or the first new token at the last slot).
    cache_dtype = next(iter(cache.c_kv.values())).dtype
    mtp_cache = (jnp.zeros((batch, slots, m.kv_lora_rank), cache_dtype),
                 jnp.zeros((batch, slots, m.qk_rope_head_dim), cache_dtype))
    index = jnp.arange(prompt_len, dtype=jnp.int32)[None, :]
    left_pad = prompt_len - lengths[:, None]
    following = jnp.concatenate([prompt_tokens[:, 1:].astype(jnp.int32), pending[:, None]], axis=1)
    q_all, mtp_cache = mtp_with_cache(m, params, router_bias, details["hidden"], following,
                                      jnp.maximum(index - left_pad, 0), (index >= left_pad).astype(jnp.int32),
                                      mtp_cache, jnp.zeros((), jnp.int32), valid, prefill=True)
    q_logits = target(q_all[:, -1])
    draft = _draw(q_logits, jax.random.fold_in(rng, 1), temperature)
    experts = expert_record(details["expert_index"], n) if record_experts else None
    rows = jnp.arange(batch)
    zero = jnp.zeros((batch,), jnp.int32)

    def cond(state):
        return ~jnp.all(state["done"])

    def body(state):
        s = dict(state)
        index, active = s["index"], ~s["done"]
        keys = jax.random.split(jax.random.fold_in(rng, 2 + s["step"]), 3)
        slot = jnp.arange(slots, dtype=jnp.int32)[None, :]
        new_slots = (slot == index) | (slot == index + 1)
        positions = s["lengths"][:, None] + jnp.arange(2, dtype=jnp.int32)[None, :]
        fed = jnp.stack([s["pending"], s["draft"]], axis=1)  # [B, 2]
        logits, caches, details = forward_with_cache(
            m, params, router_bias, fed, positions, jnp.ones((batch, 2), jnp.int32), s["cache"],
            index, s["valid"] | new_slots, details=True)
        p_logits = target(logits[:, 0])  # at the pending token: judges the draft
        accepted, correction = accept_or_correct(p_logits, s["q_logits"], s["draft"], keys[0], temperature)
        bonus = _draw(target(logits[:, 1]), keys[1], temperature)  # after a kept draft
        following = jnp.where(accepted, bonus, correction)

        # Emit [draft, bonus] or [correction], stopping at a stop token or at n tokens.
        first = jnp.where(accepted, s["draft"], correction)
        scored = limit_vocab(logits, vocab_limit)  # log-probs at temperature 1, as generate's
        first_lp = token_logprobs(scored[:, 0], first)
        emit_first = active
        emit_second = active & accepted & ~stopped(first, stop_tokens) & (s["count"] + 1 < n)
        out_col = lambda ok, col: jnp.where(ok, col, n)  # noqa: E731  (column n: dropped)
        tok = s["tokens"].at[rows, out_col(emit_first, s["count"])].set(first, mode="drop")
        tok = tok.at[rows, out_col(emit_second, s["count"] + 1)].set(bonus, mode="drop")
        lp = s["logprobs"].at[rows, out_col(emit_first, s["count"])].set(first_lp, mode="drop")
        lp = lp.at[rows, out_col(emit_second, s["count"] + 1)].set(
            token_logprobs(scored[:, 1], bonus), mode="drop")
        count = s["count"] + emit_first.astype(jnp.int32) + emit_second.astype(jnp.int32)
        finished = (s["finished"] | (emit_first & stopped(first, stop_tokens))
                    | (emit_second & stopped(bonus, stop_tokens)))
        done = finished | (count >= n)

        # The pending token's slot is kept, the draft's only when accepted.
        kept = ((slot == index) & active[:, None]) | ((slot == index + 1) & (active & accepted)[:, None])
        valid = s["valid"] | kept
        if record_experts:  # the pending token is response token lengths - P of its row
            col = s["lengths"] - prompt_lengths + prompt_len
            put = lambda rec, c, e: rec.at[rows, jnp.where(active, c, prompt_len + n)].set(e, mode="drop")  # noqa: E731
            rec = put(s["experts"], col, details["expert_index"][:, 0])
            s["experts"] = put(rec, col + 1, details["expert_index"][:, 1])  # overwritten if rejected

        # Next draft: the MTP module at both new slots (the pending slot is followed by the
        # draft if kept, else by the correction; the draft's by the bonus), read at the
        # last kept one.
        after = jnp.stack([first, bonus], axis=1)
        q_both, mtp_cache = mtp_with_cache(m, params, router_bias, details["hidden"], after, positions,
                                           jnp.ones((batch, 2), jnp.int32), s["mtp_cache"], index, valid)
        q_logits = target(jnp.where(accepted[:, None], q_both[:, 1], q_both[:, 0]))
        s.update(
            step=s["step"] + 1, index=index + 2, cache=caches, mtp_cache=mtp_cache, valid=valid,
            lengths=s["lengths"] + active.astype(jnp.int32) + (active & accepted).astype(jnp.int32),
            pending=following,
            draft=_draw(q_logits, keys[2], temperature), q_logits=q_logits, tokens=tok, logprobs=lp,
            count=count, done=done, finished=finished,
            proposed=s["proposed"] + active.astype(jnp.int32),
            accepted=s["accepted"] + (active & accepted).astype(jnp.int32))
        return s

    state = {"step": jnp.zeros((), jnp.int32), "index": cache.index, "cache": cache.arrays(),
             "mtp_cache": mtp_cache, "valid": valid, "lengths": lengths, "pending": pending,
             "draft": draft, "q_logits": q_logits, "tokens": tokens, "logprobs": logprobs,
             "count": count, "done": done, "finished": finished, "proposed": zero, "accepted": zero, "experts": experts}
    final = jax.lax.while_loop(cond, body, state)
    out = {"tokens": final["tokens"], "lengths": final["count"], "logprobs": final["logprobs"],
           "finished": final["finished"], "draft_proposed": final["proposed"], "draft_accepted": final["accepted"]}
    if record_experts:
        out["expert_index"] = final["experts"]
    return out
