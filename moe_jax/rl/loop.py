"""The GRPO rollout/learner loop, started from a supervised (SFT) checkpoint.

    python -m moe_jax.main --config=experiments/grpo_reasoning.py:tiny --workdir=runs/grpo

runs the `grpo` job (moe_jax.jobs.grpo): it makes sure an SFT model exists, then
`train_grpo` repeats for `train.steps` steps:

    prompts (train split, shuffled) -> G samples each at rl.temperature -> rewards
    -> group advantages -> pi_old and pi_ref log-probs -> rl.num_minibatches updates

and evaluates held-out greedy exact match before the first step, every `eval.every`
steps and at the end. Every step's sampling rng is derived from the step number and the
prompt iterator's position is saved with each checkpoint, so killing the run and
rerunning the same command continues exactly where it stopped. The reference policy is
the SFT model, reloaded from its checkpoint on resume.
"""

from __future__ import annotations

import functools
import json
import os
import time

import grain
import jax
import ml_collections
import numpy as np

from moe_jax.data.tasks import get_task
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.models.config import ConfigError
from moe_jax.models.transformer import Transformer
from moe_jax.rl.grpo import GRPOConfig
from moe_jax.rl.learner import make_grpo_step
from moe_jax.rl.policy import make_scorer, scoring_model
from moe_jax.rl.rewards import task_rewards
from moe_jax.rl.rollout import sample_groups
from moe_jax.train.checkpoint import Checkpointer
from moe_jax.train.evaluate import exact_match
from moe_jax.train.loader import load_model
from moe_jax.train.loop import (NonFiniteLossError, load_data, optimizer_config, record_config,
                                resume)
from moe_jax.train.metrics import MetricsWriter, Progress, read_metrics
from moe_jax.train.optimizer import make_optimizer
from moe_jax.train.state import create_train_state

def validate_rl_config(config: ml_collections.ConfigDict):
    """Fail before any compute on a bad `rl` section."""
    if "rl" not in config:
        raise ConfigError("rl", None, "an `rl` section (see experiments/grpo_reasoning.py)")
    r = config.rl
    for name in ("group_size", "prompt_len", "max_new_tokens", "num_minibatches"):
        if not isinstance(r[name], int) or r[name] < 1:
            raise ConfigError(f"rl.{name}", r[name], "a positive integer")
    if r.group_size < 2:
        raise ConfigError("rl.group_size", r.group_size, "at least 2 (advantages compare a group)")
    rows = config.train.batch_size * r.group_size
    if rows % r.num_minibatches:
        raise ConfigError("rl.num_minibatches", r.num_minibatches,
                          f"a divisor of train.batch_size x rl.group_size = {rows}")
    if not r.temperature > 0:
        raise ConfigError("rl.temperature", r.temperature, "> 0 (GRPO needs sampled groups)")
    if r.prompt_len + r.max_new_tokens > config.model.max_seq_len:
        raise ConfigError("rl.max_new_tokens", r.max_new_tokens,
                          f"at most model.max_seq_len - rl.prompt_len = "
                          f"{config.model.max_seq_len - r.prompt_len}")
    grpo_config(config)  # aggregation and clip checks


def grpo_config(config) -> GRPOConfig:
    r = config.rl
    return GRPOConfig(eps_low=r.eps_low, eps_high=r.eps_high, beta=r.beta,
                      aggregation=r.aggregation, max_length=r.max_new_tokens)


@functools.lru_cache(maxsize=4)
def _compiled(model_config: ml_collections.FrozenConfigDict,
              opt_config: ml_collections.FrozenConfigDict, grpo: GRPOConfig):
    """(optimizer, scorer, jitted update), shared by runs with the same settings in one
    process (a sweep in a notebook, the tests), which then compile once."""
    model = scoring_model(model_config)
    optimizer = make_optimizer(opt_config)
    update = jax.jit(make_grpo_step(model, optimizer, grpo), donate_argnums=0)
    return optimizer, make_scorer(model), update


def _prompt_iterator(source, seed: int):
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def _check_finite(step: int, scalars: dict):
    bad = {k: v for k, v in scalars.items() if not np.isfinite(v)}
    if bad:
        raise NonFiniteLossError(f"GRPO step {step}: non-finite {bad}; stopping without saving "
                                 f"this state. The last checkpoint is untouched.")


def verifier_reward(config):
    """The task's verifier plus rl.format_weight x the format reward (rl.reward = "verifier")."""
    return functools.partial(task_rewards, config.data.task, format_weight=config.rl.format_weight)


def train_grpo(config: ml_collections.ConfigDict, workdir: str, init_dir: str, reward_fn=None,
               log=print) -> dict:
    """Run GRPO from the model in `init_dir` (an SFT workdir or a model directory);
    returns the summary (also written to summary.json).

    reward_fn(examples, responses) -> {"reward": [N], ...}; default: `verifier_reward`.
    """
    validate_rl_config(config)
    os.makedirs(workdir, exist_ok=True)
    record_config(config, workdir)
    t, r, m = config.train, config.rl, config.model
    task = config.data.task
    tokenizer = get_tokenizer(config.data.tokenizer)
    reward_fn = reward_fn or verifier_reward(config)
    train_source, test_source = load_data(config, workdir)
    task_spec = get_task(task)

    # An SFT workdir, or a `moe-jax convert` directory that brings its own model config.
    start = load_model(init_dir, m, log=log)
    m, ref_params, router_bias = start.model_config, start.params, start.router_bias
    policy = Transformer.from_config(m)
    opt_config = optimizer_config(config)
    optimizer, score, update = _compiled(ml_collections.FrozenConfigDict(m),
                                         ml_collections.FrozenConfigDict(opt_config), grpo_config(config))
    state = create_train_state(policy, optimizer, jax.random.PRNGKey(t.seed), 8)
    # A copy: the update donates the policy's buffers, and the reference must survive.
    params = jax.tree.map(jax.numpy.copy, ref_params)
    state = state.replace(params=params, opt_state=optimizer.init(params),
                          router_bias=router_bias)
    prompts = _prompt_iterator(train_source, t.seed)
    checkpointer = Checkpointer(workdir, keep=t.keep_checkpoints, async_save=t.async_checkpoint, log=log)
    state = resume(checkpointer, state, prompts, workdir, log, what="GRPO ")
    start_step = int(state.step)

    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    rows = t.batch_size * r.group_size
    progress = Progress(t.steps, start_step, rows * (r.prompt_len + r.max_new_tokens),
                        enabled=t.progress_bar)
    base_rng = jax.random.PRNGKey(t.seed + 1)

    def evaluate(num_examples):
        accuracy, count, _ = exact_match(
            m, state.params, state.router_bias, test_source, tokenizer, task=task,
            num_examples=num_examples, batch_size=config.eval.batch_size,
            max_new_tokens=config.eval.max_new_tokens)
        writer.write(int(state.step), {"eval/exact_match": accuracy, "eval/examples": count})
        progress.write(f"step {int(state.step)}: held-out exact match {accuracy:.1%} on {count}")
        return accuracy, count

    initial = None
    if start_step == 0:
        initial = evaluate(config.eval.final_num_examples)[0]
    start_time, scalars = time.time(), {}
    try:
        for step in range(start_step, t.steps):
            examples = [task_spec.from_record(next(prompts)) for _ in range(t.batch_size)]
            rollout = sample_groups(
                m, state.params, state.router_bias, examples, tokenizer, reward_fn=reward_fn,
                group_size=r.group_size, prompt_len=r.prompt_len, max_new_tokens=r.max_new_tokens,
                temperature=r.temperature, rng=jax.random.fold_in(base_rng, step),
                scale_by_std=r.scale_by_std)
            batch = {k: rollout[k] for k in ("tokens", "positions", "segment_ids",
                                             "response_mask", "advantages")}
            batch["old_logprobs"] = score(state.params, state.router_bias, batch)
            batch["ref_logprobs"] = score(ref_params, state.router_bias, batch)
            per_update = []
            for part in np.array_split(np.arange(rows), r.num_minibatches):
                minibatch = jax.tree.map(lambda x: x[part], batch)
                state, metrics = update(state, minibatch)
                per_update.append(metrics)
            # One optimizer step per minibatch; state.step counts GRPO steps (rollouts).
            state = state.replace(step=jax.numpy.asarray(step + 1, jax.numpy.int32))
            host = jax.device_get(per_update)
            scalars = {k: float(np.mean([u[k] for u in host])) for k in host[0]}
            scalars.update({k: float(np.mean(rollout[k])) for k in
                            ("reward", "correct", "format", "response_length", "informative")
                            if k in rollout})
            _check_finite(step + 1, scalars)
            done = step + 1
            progress.update(done, reward=scalars["reward"])
            if done % t.log_every == 0 or done == t.steps:
                writer.write(done, dict(scalars, elapsed_seconds=time.time() - start_time))
            if done % t.checkpoint_every == 0 or done == t.steps:
                checkpointer.save(done, state, prompts.get_state(), {"seed": t.seed})
            if config.eval.every and done % config.eval.every == 0 and done != t.steps:
                evaluate(config.eval.num_examples)
    finally:
        checkpointer.close()
        progress.close()

    train_seconds = time.time() - start_time
    accuracy, count = evaluate(config.eval.final_num_examples)
    summary = {"step": int(state.step), "exact_match": accuracy, "eval_examples": count,
               "initial_exact_match": initial, "final_reward": scalars.get("reward"),
               "train_seconds": round(train_seconds, 1), "task": task}
    if initial is None:  # resumed: the step-0 evaluation is in the metrics file
        summary["initial_exact_match"] = read_metrics(workdir).get(0, {}).get("eval/exact_match")
    writer.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary
