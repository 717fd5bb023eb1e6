"""One GRPO iteration, the body both GRPO runs share (the policy's, rl/loop.py, and the
GRM's rule-based RL phase, grm/spct.py), on the mesh of a Placement:

    rollout(step, state, examples)   G samples per prompt by the current policy (the KV-
                                     cached sampler, sharded), rewards, group advantages,
                                     and pi_old / pi_ref log-probs of the sampled tokens
    update(state, rollout, step)     num_minibatches clipped-objective steps, then
                                     state.step = step + 1 (steps count rollouts)

MoE-aware options: the rollout records every token's experts per MoE layer and the update
reports the router's health against them (moe_jax.rl.router_health); routing_replay runs
the rollout's experts in pi_old's scoring and in the update; update_router_bias moves the
balancing biases during RL; speculative samples with the MTP module's drafts.

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
                 "old_logprobs", "ref_logprobs", "expert_index")
ROLLOUT_SCALARS = ("reward", "correct", "format", "response_length", "informative", "well_formed",
                   "rollout_seconds", "draft_acceptance")
LAST_VALUE = ("routing/bias",)  # per-minibatch arrays logged as they end, not averaged


@functools.lru_cache(maxsize=8)
def _compiled(model_config: ml_collections.FrozenConfigDict, optimizer, grpo: GRPOConfig, placement,
              replay: bool, bias_update_rate: float):
    """(jitted scorer, jitted replaying scorer, jitted update) for these settings on this
    placement, shared by runs in one process (a sweep in a notebook, the tests), which
    then compile once."""
    model = scoring_model(model_config)
    score = jax.jit(lambda params, bias, batch: sequence_logprobs(model, params, bias, batch)[0])
    replayed = jax.jit(lambda params, bias, batch: sequence_logprobs(model, params, bias, batch, True)[0])
    update = jax.jit(make_grpo_step(model, optimizer, grpo, replay=replay,
                                    bias_update_rate=bias_update_rate), donate_argnums=0)
    return score, replayed, update


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
                 step_sharding, seed: int, routing_replay: bool = False,
                 update_router_bias: bool = False, speculative: bool = False, watermark=None):
        """ref_params: pi_ref of the KL term, on the mesh (None: no reference, beta = 0).
        step_sharding: the sharding of state.step. seed: the sampling rng's.
        routing_replay, update_router_bias, speculative: the rl fields of those names.
        watermark: a moe_jax.infer.watermark.Watermark the rollouts are drawn with (None:
        none); the old log-probs are the policy's own, so the clipped ratio starts at 1
        either way."""
        self.watermark = watermark
        self.m, self.grpo, self.placement = model_config, grpo, placement
        self.tokenizer, self.reward_fn = tokenizer, reward_fn
        self.group_size, self.prompt_len, self.max_new_tokens = group_size, prompt_len, max_new_tokens
        self.temperature, self.num_minibatches, self.scale_by_std = temperature, num_minibatches, scale_by_std
        self.ref_params, self.step_sharding = ref_params, step_sharding
        self.base_rng = jax.random.PRNGKey(seed)
        self.has_experts = model_config.num_layers > model_config.num_dense_layers
        if routing_replay and not self.has_experts:
            raise ConfigError("rl.routing_replay", routing_replay, "False for a model without MoE layers")
        if speculative and model_config.mtp_depth < 1:
            raise ConfigError("rl.speculative", speculative, f"False: the model's mtp_depth is "
                              f"{model_config.mtp_depth}; speculative rollouts draft with its MTP module")
        self.routing_replay, self.speculative = routing_replay, speculative
        rate = float(model_config.bias_update_rate) if update_router_bias else 0.0
        self.score, self.score_replayed, self.update_fn = _compiled(
            ml_collections.FrozenConfigDict(model_config), optimizer, grpo, placement, routing_replay, rate)

    def rollout(self, step: int, state, examples) -> dict:
        """Sample, score and reward G responses for each of `examples` with state's policy."""
        from moe_jax.infer.generate import generate

        out = sample_groups(
            self.m, state.params, state.router_bias, examples, self.tokenizer, reward_fn=self.reward_fn,
            group_size=self.group_size, prompt_len=self.prompt_len, max_new_tokens=self.max_new_tokens,
            temperature=self.temperature, rng=jax.random.fold_in(self.base_rng, step),
            scale_by_std=self.scale_by_std, record_experts=self.has_experts, speculative=self.speculative,
            generate_fn=lambda *a, **k: self.placement.generate(generate, *a, **k),
            watermark=self.watermark)
        fields = SCORED + (("expert_index",) if self.routing_replay else ())
        scored = self.placement.shard_batch({k: out[k] for k in fields}, process_local=False)
        # pi_old is the sampler: under replay, scored with the experts the sampler ran.
        old_score = self.score_replayed if self.routing_replay else self.score
        # On the host, like the rest of the rollout: the minibatches slice them alike.
        out["old_logprobs"] = replicate_to_host(
            self.placement.run(old_score, state.params, state.router_bias, scored))
        if self.ref_params is not None:
            out["ref_logprobs"] = replicate_to_host(
                self.placement.run(self.score, self.ref_params, state.router_bias,
                               {k: scored[k] for k in SCORED}))
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
        per_update = jax.device_get(per_update)
        metrics = {k: (np.asarray(per_update[-1][k]) if k in LAST_VALUE
                       else np.mean([np.asarray(u[k]) for u in per_update], axis=0))
                   for k in per_update[0]}
        metrics = {k: float(v) if np.ndim(v) == 0 else v for k, v in metrics.items()}
        metrics.update({k: float(np.mean(rollout[k])) for k in ROLLOUT_SCALARS if k in rollout})
        return state, metrics
