"""The GRM as the reward of policy GRPO, in place of the task's verifier.

    python -m moe_jax.main --config=experiments/grpo_reasoning.py:tiny --workdir=runs/grpo_grm \\
        --config.rl.reward=grm --config.rl.grm_from=runs/grm

A group of G samples for one prompt is judged in cyclic pairs (judge.py): every sample
is scored twice, against each neighbour, and its reward is its mean score rescaled to
[0, 1] ((s - 1) / 9), so a group's rewards compare like the verifier's 0/1 do. The
verifier's verdict is still reported as "correct", to see how often the GRM's
preference agrees with the truth.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from moe_jax.data.tasks import get_task
from moe_jax.grm.format import MAX_SCORE, MIN_SCORE
from moe_jax.grm.judge import judge_candidates
from moe_jax.interop.checkpoint import MODEL_CONFIG_FILE
from moe_jax.train.loader import load_model

GRM_SPEC_FILE = "grm_spec.json"  # generation settings saved next to the GRM's weights


def grm_reward_fn(model_config, params, router_bias, tokenizer, *, group_size: int, k: int = 1,
                  temperature: float = 0.5, prompt_len: int, max_new_tokens: int,
                  batch_size: int = 256, task: str = "arithmetic", seed: int = 0,
                  view: str = "full"):
    """-> reward_fn(examples, responses) for moe_jax.rl.rollout.sample_groups / train_grpo."""
    verifier = get_task(task)
    calls = [0]

    def reward_fn(examples, responses):
        if len(examples) != len(responses) or len(examples) % group_size:
            raise ValueError(f"{len(examples)} examples, {len(responses)} responses: expected "
                             f"equal numbers, a multiple of group_size={group_size}")
        groups = len(examples) // group_size
        queries = [examples[g * group_size].prompt for g in range(groups)]
        candidates = [list(responses[g * group_size:(g + 1) * group_size]) for g in range(groups)]
        ratings = judge_candidates(model_config, params, router_bias, queries, candidates,
                                   tokenizer, pairing="cyclic", k=k, temperature=temperature,
                                   prompt_len=prompt_len, max_new_tokens=max_new_tokens,
                                   rng=jax.random.PRNGKey(seed + calls[0]), batch_size=batch_size,
                                   view=view)
        calls[0] += 1
        reward = np.clip((ratings.reshape(-1) - MIN_SCORE) / (MAX_SCORE - MIN_SCORE), 0.0, 1.0)
        correct = [bool(verifier.verify(e, r)) for e, r in zip(examples, responses)]
        return {"reward": reward.astype(np.float32), "correct": np.asarray(correct, np.float32)}

    return reward_fn


def load_grm(directory: str):
    """(params, router_bias, model_config, spec) of a GRM saved by moe_jax.grm.pipeline:
    its workdir (the RL model, else the RFT one) or one saved model directory."""
    for candidate in (os.path.join(directory, "models", "rl"), os.path.join(directory, "models", "rft"),
                      directory):
        if os.path.exists(os.path.join(candidate, MODEL_CONFIG_FILE)):
            loaded = load_model(candidate)
            spec_path = os.path.join(candidate, GRM_SPEC_FILE)
            spec = json.load(open(spec_path)) if os.path.exists(spec_path) else {}
            return loaded.params, loaded.router_bias, loaded.model_config, spec
    raise FileNotFoundError(f"rl.grm_from={directory!r}: expected a GRM workdir (models/rl or "
                            f"models/rft inside) or a saved model directory with {MODEL_CONFIG_FILE}")


def reward_fn_from_config(config, tokenizer):
    """The reward named rl.reward = "grm": the GRM saved in rl.grm_from."""
    r = config.rl
    params, router_bias, model_config, spec = load_grm(r.grm_from)
    max_new_tokens = int(spec.get("max_new_tokens", 160))
    # Two of the policy's responses per GRM input, plus the query and the labels.
    prompt_len = 2 * (r.max_new_tokens + 4) + r.prompt_len + 4
    if prompt_len + max_new_tokens > model_config.max_seq_len:
        raise ValueError(f"rl.max_new_tokens={r.max_new_tokens}: GRM inputs of {prompt_len} tokens "
                         f"plus {max_new_tokens} generated exceed the GRM's max_seq_len "
                         f"{model_config.max_seq_len}")
    return grm_reward_fn(model_config, params, router_bias, tokenizer, group_size=r.group_size,
                         k=r.get("grm_samples", 1), temperature=r.get("grm_temperature", 0.5),
                         prompt_len=prompt_len, max_new_tokens=max_new_tokens,
                         task=config.data.task, seed=config.train.seed,
                         view=spec.get("response_view", "full"))
