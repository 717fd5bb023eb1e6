"""One GRPO iteration, the body both GRPO runs share (the policy's, rl/loop.py, and the
GRM's rule-based RL phase, grm/spct.py), on the mesh of a Placement:

    rollout(step, state, examples)   G samples per prompt by the current policy (the KV-
                                     cached sampler, sharded), rewards, group advantages,
                                     and pi_old / pi_ref log-probs of the sampled tokens
    update(state, rollout, step)     num_minibatches clipped-objective steps, then
                                     state.step = step + 1 (steps count rollouts)

Rows (prompts x G) are split over the mesh's batch axes, so the number of rows and of
minibatch rows must be multiples of `placement.batch_shards`; every process computes the
same rollout (the prompts, the sampling rng and the rewards are the same everywhere).
"""

from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np

from moe_jax.models.config import ConfigError
from moe_jax.rl.grpo import GRPOConfig
from moe_jax.rl.learner import make_grpo_step
from moe_jax.rl.policy import scoring_model, sequence_logprobs
from moe_jax.rl.rollout import sample_groups
from moe_jax.train.placement import replicate_to_host

SCORED = ("tokens", "positions", "segment_ids")
UPDATE_FIELDS = ("tokens", "positions", "segment_ids", "response_mask", "advantages",
                 "old_logprobs", "ref_logprobs")
ROLLOUT_SCALARS = ("reward", "correct", "format", "response_length", "informative", "well_formed")


@functools.lru_cache(maxsize=8)
def _compiled(model_config: ml_collections.FrozenConfigDict, optimizer, grpo: GRPOConfig, placement):
    """(jitted scorer, jitted update) for these settings on this placement, shared by runs
    in one process (a sweep in a notebook, the tests), which then compile once."""
    model = scoring_model(model_config)
    score = jax.jit(lambda params, bias, batch: sequence_logprobs(model, params, bias, batch)[0])
    update = jax.jit(make_grpo_step(model, optimizer, grpo), donate_argnums=0)
    return score, update


def check_rows(rows: int, num_minibatches: int, placement, field: str) -> None:
    """Rollout rows and minibatch rows must split over the batch axes."""
    shards = placement.batch_shards
    if (rows // num_minibatches) % shards:
        raise ConfigError(field, rows, f"rows (prompts x group size) whose 1/{num_minibatches} "
                          f"(a minibatch) is a multiple of {shards}, the mesh's batch shards "
                          f"({placement.describe()})")


class GRPOIteration:
    def __init__(self, model_config, optimizer, grpo: GRPOConfig, placement, *, tokenizer,
                 reward_fn, group_size: int, prompt_len: int, max_new_tokens: int,
                 temperature: float, num_minibatches: int, scale_by_std: bool, ref_params,
                 step_sharding, seed: int, watermark=None):
        """ref_params: pi_ref of the KL term, on the mesh (None: no reference, beta = 0).
        step_sharding: the sharding of state.step. seed: the sampling rng's. watermark: a
        moe_jax.infer.watermark.Watermark the rollouts are drawn with (None: none); the
        old log-probs are the policy's own, so the clipped ratio starts at 1 either way."""
        self.watermark = watermark
        self.m, self.grpo, self.placement = model_config, grpo, placement
        self.tokenizer, self.reward_fn = tokenizer, reward_fn
        self.group_size, self.prompt_len, self.max_new_tokens = group_size, prompt_len, max_new_tokens
        self.temperature, self.num_minibatches, self.scale_by_std = temperature, num_minibatches, scale_by_std
        self.ref_params, self.step_sharding = ref_params, step_sharding
        self.base_rng = jax.random.PRNGKey(seed)
        self.score, self.update_fn = _compiled(ml_collections.FrozenConfigDict(model_config), optimizer,
                                               grpo, placement)

    def rollout(self, step: int, state, examples) -> dict:
        """Sample, score and reward G responses for each of `examples` with state's policy."""
        from moe_jax.infer.generate import generate

        out = sample_groups(
            self.m, state.params, state.router_bias, examples, self.tokenizer, reward_fn=self.reward_fn,
            group_size=self.group_size, prompt_len=self.prompt_len, max_new_tokens=self.max_new_tokens,
            temperature=self.temperature, rng=jax.random.fold_in(self.base_rng, step),
            scale_by_std=self.scale_by_std,
            generate_fn=lambda *a, **k: self.placement.generate(generate, *a, **k),
            watermark=self.watermark)
        scored = self.placement.shard_batch({k: out[k] for k in SCORED}, process_local=False)
        # On the host, like the rest of the rollout: the minibatches slice them alike.
        out["old_logprobs"] = replicate_to_host(
            self.placement.run(self.score, state.params, state.router_bias, scored))
        if self.ref_params is not None:
            out["ref_logprobs"] = replicate_to_host(
                self.placement.run(self.score, self.ref_params, state.router_bias, scored))
        return out

    def update(self, state, rollout: dict, step: int):
        """num_minibatches GRPO steps on the rollout -> (state, metrics): the mean of the
        minibatches' metrics and the rollout's scalars."""
        host = {k: np.asarray(v) for k, v in rollout.items() if k in UPDATE_FIELDS}
        rows = len(host["advantages"])
        per_update = []
        for part in np.array_split(np.arange(rows), self.num_minibatches):
            minibatch = self.placement.shard_batch({k: v[part] for k, v in host.items()}, process_local=False)
            state, metrics = self.placement.run(self.update_fn, state, minibatch)
            per_update.append(metrics)
        # One optimizer step per minibatch; state.step counts GRPO steps (rollouts).
        state = state.replace(step=self.placement.put(np.int32(step + 1), self.step_sharding))
        metrics = {k: float(np.mean([float(u[k]) for u in jax.device_get(per_update)]))
                   for k in per_update[0]}
        metrics.update({k: float(np.mean(rollout[k])) for k in ROLLOUT_SCALARS if k in rollout})
        return state, metrics
