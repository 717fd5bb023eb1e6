"""The policy's view of sampled sequences: layout and per-token log-probs.

A rollout row is a left-padded prompt followed by the sampled response:

    tokens     <pad> <pad> <bos> 1 + 2 =  + 1 0 ... > 3 <eos> <pad> ...
               |---- prompt, P columns ---||------ response, N columns ------|

Scoring runs the model once over tokens[:, :-1] and reads the log-prob of each next
token, so every [B, P + N - 1] array below is indexed by the *predicting* position:
column t holds log pi(tokens[t + 1] | tokens[:t + 1]). `response_mask` selects the
columns whose target is a sampled response token (the stop token included).

Padding gets segment id 0 and real tokens 1, and positions count real tokens only, so
a row scores exactly as its unpadded sequence would (the model masks across segments).
Scoring uses the never-dropping dispatch the sampler uses: the learner must see the
same routing the sampler did, or the importance ratio measures dispatch noise. With
routing replay the sampler's own expert choices ("expert_index" [B, P+N, M, K], as
`generate(record_experts=True)` returns them) are handed to the scoring forward, which
then runs those experts whatever its router would choose now.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.infer.generate import inference_config
from moe_jax.models.transformer import Transformer
from moe_jax.moe.router import BIAS_COLLECTION, LOAD_COLLECTION


def rollout_layout(prompt_tokens, prompt_lengths, response_tokens, response_lengths):
    """numpy arrays -> dict(tokens, positions, segment_ids [B, P+N], response_mask [B, P+N-1]).

    prompt_tokens [B, P] left-padded with prompt_lengths [B] real tokens; response_tokens
    [B, N] with response_lengths [B] real tokens (the rest is padding).
    """
    prompt_tokens, response_tokens = np.asarray(prompt_tokens), np.asarray(response_tokens)
    batch, prompt_len = prompt_tokens.shape
    new_len = response_tokens.shape[1]
    tokens = np.concatenate([prompt_tokens, response_tokens], axis=1).astype(np.int32)
    columns = np.arange(prompt_len + new_len)[None]
    start = prompt_len - np.asarray(prompt_lengths)[:, None]  # first real prompt column
    end = prompt_len + np.asarray(response_lengths)[:, None]  # one past the last response token
    real = (columns >= start) & (columns < end)
    positions = np.where(real, columns - start, 0).astype(np.int32)
    targets = columns[:, 1:]
    response_mask = ((targets >= prompt_len) & (targets < end)).astype(np.float32)
    return {"tokens": tokens, "positions": positions, "segment_ids": real.astype(np.int32),
            "response_mask": response_mask}


def scoring_model(model_config) -> Transformer:
    """The model as the sampler runs it (dropless dispatch), without its MTP modules:
    the policy's log-probs never read them, so they would be computed for nothing (their
    parameters stay in the state, untouched)."""
    m = inference_config(model_config).as_configdict()
    m.mtp_depth = 0
    return Transformer.from_config(m)


def sequence_logprobs(model: Transformer, params, router_bias, batch, replay: bool = False):
    """-> (log-probs [B, L-1] of each next token, expert loads per router, the main MoE
    layers' routing statistics (moe_jax.moe.block: expert_index [M, B, L-1, K], ...)).

    batch: tokens, positions, segment_ids [B, L] as `rollout_layout` builds them, and
    with replay=True the rollout's expert_index [B, L, M, K] to run instead of routing.
    """
    variables = {"params": params, BIAS_COLLECTION: router_bias}
    experts = batch["expert_index"][:, :-1] if replay else None
    (logits, extras), mutated = model.apply(
        variables, batch["tokens"][:, :-1], batch["positions"][:, :-1],
        batch["segment_ids"][:, :-1], experts, mutable=[LOAD_COLLECTION])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    targets = batch["tokens"][:, 1:]
    chosen = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return chosen, mutated.get(LOAD_COLLECTION, {}), extras["moe_stats"]


def make_scorer(model: Transformer, replay: bool = False):
    """-> jitted score(params, router_bias, batch) -> log-probs [B, L-1], no gradient:
    how the old and the reference policy see a rollout (replaying its experts if asked)."""
    keys = ("tokens", "positions", "segment_ids") + (("expert_index",) if replay else ())
    scored = jax.jit(lambda params, bias, batch: sequence_logprobs(model, params, bias, batch, replay)[0])
    return lambda params, bias, batch: scored(params, bias or {}, {k: batch[k] for k in keys})
