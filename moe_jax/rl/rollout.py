"""Rollouts: G sampled responses per prompt, scored by a reward function.

`sample_groups` is the sampling half of the GRPO loop (the update half is
moe_jax.rl.learner). It tokenizes prompts left-padded to a fixed width (one compiled
shape for the whole run), repeats each prompt G times so that a group is G contiguous
rows, samples with the MLA-cached generator, decodes, and asks `reward_fn` for rewards.

reward_fn(examples, responses) -> {"reward": float32 [N], ...any other per-response
arrays to log}; examples[i] is the Example responses[i] answers (None for a response
holding ids outside the tokenizer's vocabulary, scored as wrong by `task_rewards`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from moe_jax.analysis.exact_match import decode_response
from moe_jax.data.pipeline import prompt_ids
from moe_jax.infer.generate import generate
from moe_jax.rl.grpo import group_advantages, group_is_informative
from moe_jax.rl.policy import rollout_layout

RewardFn = Callable[[Sequence, Sequence[str]], dict]


def left_padded_prompts(prompts: Sequence[str], tokenizer, prompt_len: int):
    """-> (tokens int32 [N, prompt_len], lengths int32 [N]); a longer prompt raises."""
    tokens = np.full((len(prompts), prompt_len), tokenizer.pad_id, np.int32)
    lengths = np.zeros(len(prompts), np.int32)
    for row, prompt in enumerate(prompts):
        ids = prompt_ids(tokenizer, prompt)
        if len(ids) > prompt_len:
            raise ValueError(f"prompt {prompt!r} has {len(ids)} tokens; rl.prompt_len is {prompt_len}")
        tokens[row, prompt_len - len(ids):] = ids
        lengths[row] = len(ids)
    return tokens, lengths


def sample_groups(model_config, params, router_bias, examples: Sequence, tokenizer, *,
                  reward_fn: RewardFn, group_size: int, prompt_len: int, max_new_tokens: int,
                  temperature: float, rng, scale_by_std: bool = True, generate_fn=generate,
                  record_experts: bool = False, speculative: bool = False, watermark=None) -> dict:
    """Sample `group_size` responses for each example and score them.

    Returns numpy arrays with B = len(examples) x group_size rows, groups contiguous:
    the `rollout_layout` fields, "advantages" [B], every reward_fn field, "response_length"
    [B], "finished" [B], "informative" [len(examples)], plus "responses" (texts, None
    for undecodable ones) and "examples" (repeated to match). generate_fn: the sampler
    (moe_jax.infer.generate.generate, or a Placement's sharded call of it).
    "rollout_seconds" is the sampler's wall time (compilation included on a first call).

    record_experts adds the sampler's experts, "expert_index" [B, P + N, M, K], aligned
    with "tokens"; speculative samples with MTP drafts and adds "draft_acceptance" (the
    fraction of drafts kept, over the batch). watermark: a moe_jax.infer.watermark.Watermark
    the responses are drawn with (None: none).
    """
    repeated = [e for e in examples for _ in range(group_size)]
    prompt_tokens, prompt_lengths = left_padded_prompts([e.prompt for e in repeated], tokenizer,
                                                        prompt_len)
    start = time.perf_counter()
    out = generate_fn(model_config, params, router_bias, prompt_tokens, prompt_lengths,
                      max_new_tokens=max_new_tokens, rng=rng, temperature=temperature,
                      stop_tokens=(tokenizer.eos_id,), pad_id=tokenizer.pad_id,
                      record_experts=record_experts, speculative=speculative, watermark=watermark)
    new_tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    seconds = time.perf_counter() - start  # the arrays are on the host: sampling has finished
    responses = [decode_response(tokenizer, row.tolist()) for row in new_tokens]
    scored = reward_fn(repeated, [r if r is not None else "" for r in responses])
    rewards = np.asarray(scored["reward"], np.float32)
    batch = rollout_layout(prompt_tokens, prompt_lengths, new_tokens, lengths)
    batch.update({k: np.asarray(v, np.float32) for k, v in scored.items()})
    batch["advantages"] = np.asarray(group_advantages(rewards, group_size, scale_by_std=scale_by_std))
    batch["informative"] = np.asarray(group_is_informative(rewards, group_size))
    batch["response_length"] = lengths.astype(np.float32)
    batch["finished"] = np.asarray(out["finished"])
    batch["rollout_seconds"] = np.float32(seconds)
    if record_experts:
        batch["expert_index"] = np.asarray(out["expert_index"])
    if speculative:
        batch["draft_acceptance"] = np.float32(np.sum(out["draft_accepted"]) /
                                               max(int(np.sum(out["draft_proposed"])), 1))
    batch["responses"], batch["examples"] = responses, repeated
    return batch
