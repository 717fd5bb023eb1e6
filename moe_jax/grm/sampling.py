"""Sampling GRM trajectories and rating them with the meta RM, in fixed-shape batches.

Every call pads its rows to `batch_size` and its prompts to `prompt_len`, so one compiled
generator serves a whole run (the last batch is filled with copies of a real row and
the copies are dropped). Under a job's mesh the rows are split over its batch axes.
"""

from __future__ import annotations

import jax
import numpy as np

from moe_jax.analysis.exact_match import decode_response
from moe_jax.grm.format import META_NO, META_YES
from moe_jax.infer.cache import init_cache
from moe_jax.infer.generate import generate, prefill
from moe_jax.infer.rows import gather_rows, place_rows, sampling_context
from moe_jax.rl.rollout import left_padded_prompts


def _batches(rows: int, batch_size: int):
    for start in range(0, rows, batch_size):
        index = np.arange(start, start + batch_size)
        yield np.minimum(index, rows - 1), min(batch_size, rows - start)


def sample_texts(model_config, params, router_bias, prompts, tokenizer, *, prompt_len: int,
                 max_new_tokens: int, temperature: float, rng, batch_size: int):
    """One sampled continuation per prompt (None where the ids leave the vocabulary).

    temperature 0 is greedy. Row i's randomness depends on its batch and position only.
    """
    if not prompts:
        return []
    tokens, lengths = left_padded_prompts(prompts, tokenizer, prompt_len)
    texts = []
    for b, (index, real) in enumerate(_batches(len(prompts), batch_size)):
        out = generate(model_config, params, router_bias, tokens[index], lengths[index],
                       max_new_tokens=max_new_tokens, rng=jax.random.fold_in(rng, b),
                       temperature=temperature, stop_tokens=(tokenizer.eos_id,),
                       pad_id=tokenizer.pad_id)
        rows = np.asarray(out["tokens"])[:real]
        texts += [decode_response(tokenizer, row.tolist()) for row in rows]
    return texts


def sample_trajectories(model_config, params, router_bias, prompts, tokenizer, *, k: int,
                        prompt_len: int, max_new_tokens: int, temperature: float, rng,
                        batch_size: int):
    """k trajectories per prompt -> list [len(prompts)] of lists [k] of texts ("" for
    undecodable ones, which every parser reports as malformed)."""
    repeated = [p for p in prompts for _ in range(k)]
    texts = sample_texts(model_config, params, router_bias, repeated, tokenizer,
                         prompt_len=prompt_len, max_new_tokens=max_new_tokens,
                         temperature=temperature, rng=rng, batch_size=batch_size)
    texts = [t or "" for t in texts]
    return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]


def meta_scores(model_config, params, router_bias, meta_prompts, tokenizer, *, prompt_len: int,
                batch_size: int):
    """The meta RM's rating of each trajectory: log p(Y) - log p(N) for the token after
    its meta prompt (moe_jax.grm.format.meta_prompt). -> float [len(meta_prompts)]."""
    if not meta_prompts:
        return np.zeros(0, np.float32)
    yes, no = tokenizer.encode(META_YES)[0], tokenizer.encode(META_NO)[0]
    tokens, lengths = left_padded_prompts(meta_prompts, tokenizer, prompt_len)
    ratings = []
    for index, real in _batches(len(meta_prompts), batch_size):
        # Split over the batch axes under a job's mesh (moe_jax.infer.rows).
        rows, (batch_tokens, batch_lengths) = place_rows(tokens[index], lengths[index])
        cache = init_cache(model_config, batch_tokens.shape[0], prompt_len)
        with sampling_context():
            logits, _ = prefill(model_config, params, router_bias, cache, batch_tokens, batch_lengths)
        logits = gather_rows(logits, rows)
        logp = jax.nn.log_softmax(np.asarray(logits, np.float32), axis=-1)
        ratings.append(np.asarray(logp[:, yes] - logp[:, no])[:real])
    return np.concatenate(ratings)
