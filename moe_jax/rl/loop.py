"""The GRPO rollout/learner loop, started from a supervised (SFT) checkpoint.

    python -m moe_jax.main --config=experiments/grpo_reasoning.py:tiny --workdir=runs/grpo

runs the `grpo` job (moe_jax.jobs.grpo): it makes sure an SFT model exists, then
`train_grpo` repeats for `train.steps` steps:

    prompts (train split, shuffled) -> G samples each at rl.temperature -> rewards
    -> group advantages -> pi_old and pi_ref log-probs -> rl.num_minibatches updates

and evaluates held-out greedy exact match before the first step, every `eval.every`
steps and at the end. With a `watermark` section enabled (moe_jax.infer.watermark) the
rollouts are drawn with its green-list bias. Every step's sampling rng is derived from
the step number and the prompt iterator's position is saved with each checkpoint, so
killing the run and rerunning the same command continues exactly where it stopped. The
reference policy is the SFT model, reloaded from its checkpoint on resume.
"""

from __future__ import annotations

import functools
import json
import os

import grain
import jax
import ml_collections
import numpy as np

from moe_jax.analysis.exact_match import exact_match
from moe_jax.data.splits import load_data
from moe_jax.data.tasks import get_task
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.infer.watermark import Watermark
from moe_jax.models.config import ConfigError
from moe_jax.models.transformer import Transformer
from moe_jax.rl.grpo import IMPORTANCE, GRPOConfig
from moe_jax.rl.iteration import GRPOIteration, check_rows
from moe_jax.rl.rewards import task_rewards
from moe_jax.train.loader import load_model
from moe_jax.train.loop import log_placement, optimizer_config
from moe_jax.train.metrics import read_metrics
from moe_jax.train.optimizer import make_optimizer
from moe_jax.train.placement import Placement
from moe_jax.train.run_config import check_and_record
from moe_jax.train.state import TrainState, create_train_state
from moe_jax.train.trainer import LoopSettings, Trainer


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
    validate_moe_rl(config)
    grpo_config(config)  # aggregation and clip checks
    watermark = Watermark.from_config(config.get("watermark"))  # a bad section fails here
    if watermark is not None and rl_option(config, "speculative"):
        raise ConfigError("rl.speculative", True, "False with a watermark (speculative acceptance "
                          "is not defined for the green-list-biased distribution)")


# The MoE-aware fields and their defaults; a config without them runs plain GRPO.
MOE_RL_DEFAULTS = {"importance": "token", "gspo_eps_low": 3e-4, "gspo_eps_high": 4e-4,
                   "routing_replay": False, "update_router_bias": False, "speculative": False}


def rl_option(config, name: str):
    return config.rl.get(name, MOE_RL_DEFAULTS[name])


def validate_moe_rl(config) -> None:
    """GSPO, routing replay, router bias updates and speculative rollouts: clear errors."""
    importance = rl_option(config, "importance")
    if importance not in IMPORTANCE:
        raise ConfigError("rl.importance", importance, f"one of {IMPORTANCE} (token: GRPO's per-token "
                          f"ratios; sequence: GSPO's sequence ratio)")
    if importance == "sequence" and config.rl.aggregation != "sequence":
        raise ConfigError("rl.aggregation", config.rl.aggregation,
                          "'sequence' with rl.importance='sequence' (GSPO averages over outputs)")
    if not 0 <= rl_option(config, "gspo_eps_low") < 1:
        raise ConfigError("rl.gspo_eps_low", rl_option(config, "gspo_eps_low"),
                          "a sequence-ratio clip in [0, 1) (the GSPO paper: 3e-4)")
    if not rl_option(config, "gspo_eps_high") >= 0:
        raise ConfigError("rl.gspo_eps_high", rl_option(config, "gspo_eps_high"),
                          "a sequence-ratio clip >= 0 (the GSPO paper: 4e-4)")
    for name in ("routing_replay", "update_router_bias", "speculative"):
        if not isinstance(rl_option(config, name), bool):
            raise ConfigError(f"rl.{name}", rl_option(config, name), "True or False")
    m = config.model
    moe = m.num_layers > m.num_dense_layers
    if rl_option(config, "routing_replay") and not moe:
        raise ConfigError("rl.routing_replay", True, "False: the model has no MoE layer to replay")
    if rl_option(config, "update_router_bias") and not (moe and m.router == "sigmoid_bias"):
        raise ConfigError("rl.update_router_bias", True, "False: only model.router='sigmoid_bias' "
                          f"has a balancing bias (model.router={m.router!r})")
    if rl_option(config, "speculative") and m.mtp_depth < 1:
        raise ConfigError("rl.speculative", True, f"False: speculative rollouts draft with the MTP "
                          f"module, and model.mtp_depth={m.mtp_depth} (train with mtp_depth >= 1)")


def grpo_config(config) -> GRPOConfig:
    r = config.rl
    return GRPOConfig(eps_low=r.eps_low, eps_high=r.eps_high, beta=r.beta,
                      aggregation=r.aggregation, max_length=r.max_new_tokens,
                      importance=rl_option(config, "importance"),
                      seq_eps_low=rl_option(config, "gspo_eps_low"),
                      seq_eps_high=rl_option(config, "gspo_eps_high"))


def _prompt_iterator(source, seed: int):
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def verifier_reward(config):
    """The task's verifier plus rl.format_weight x the format reward (rl.reward = "verifier")."""
    return functools.partial(task_rewards, config.data.task, format_weight=config.rl.format_weight)


def train_grpo(config: ml_collections.ConfigDict, workdir: str, init_dir: str, reward_fn=None,
               log=print) -> dict:
    """Run GRPO from the model in `init_dir` (an SFT workdir or a model directory), on the
    mesh of config.mesh; returns the summary (also written to summary.json).

    reward_fn(examples, responses) -> {"reward": [N], ...}; default: `verifier_reward`.
    """
    validate_rl_config(config)
    check_and_record(config, workdir, log)
    placement = Placement.from_config(config)
    t, r = config.train, config.rl
    check_rows(t.batch_size * r.group_size, r.num_minibatches, placement, "train.batch_size")
    task = config.data.task
    tokenizer = get_tokenizer(config.data.tokenizer)
    reward_fn = reward_fn or verifier_reward(config)
    train_source, test_source = load_data(config, workdir)
    task_spec = get_task(task)

    # An SFT workdir, or a model directory that brings its own model config.
    start = load_model(init_dir, config.model, log=log)
    m = start.model_config
    placement.check_model(m)
    policy = Transformer.from_config(m)
    optimizer = make_optimizer(optimizer_config(config))
    init = lambda rng: create_train_state(policy, optimizer, rng, 8)  # noqa: E731
    _, shardings = placement.state_shardings(policy, init)
    # The policy starts as the reference; both live on the mesh (the update donates the
    # policy's buffers, and the reference must survive, so they are separate arrays).
    ref_params = placement.put(start.params, shardings.params)
    params = placement.put(start.params, shardings.params)
    state = TrainState(step=placement.put(np.int32(0), shardings.step), params=params,
                       opt_state=placement.run(jax.jit(optimizer.init, out_shardings=shardings.opt_state), params),
                       router_bias=placement.put(start.router_bias, shardings.router_bias))
    log_placement(placement, state, log)
    prompts = _prompt_iterator(train_source, t.seed)
    rows = t.batch_size * r.group_size
    trainer = Trainer(workdir, LoopSettings.from_config(config, rows * (r.prompt_len + r.max_new_tokens)),
                      placement, log=log, name="GRPO ", progress_key="reward")
    state = trainer.restore(state, prompts)
    iteration = GRPOIteration(m, optimizer, grpo_config(config), placement, tokenizer=tokenizer,
                              reward_fn=reward_fn, group_size=r.group_size, prompt_len=r.prompt_len,
                              max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                              num_minibatches=r.num_minibatches, scale_by_std=r.scale_by_std,
                              ref_params=ref_params, step_sharding=shardings.step, seed=t.seed + 1,
                              routing_replay=rl_option(config, "routing_replay"),
                              update_router_bias=rl_option(config, "update_router_bias"),
                              speculative=rl_option(config, "speculative"),
                              watermark=Watermark.from_config(config.get("watermark")))

    def evaluate(num_examples, state):
        accuracy, count, _ = exact_match(
            m, state.params, state.router_bias, test_source, tokenizer, task=task,
            num_examples=num_examples, batch_size=config.eval.batch_size,
            max_new_tokens=config.eval.max_new_tokens, placement=placement)
        return {"exact_match": accuracy, "examples": count}

    initial = None
    if int(state.step) == 0:
        initial = evaluate(config.eval.final_num_examples, state)
        trainer.write(0, {f"eval/{k}": v for k, v in initial.items()})
        log(f"step 0: held-out exact match {initial['exact_match']:.1%} on {initial['examples']}")
        initial = initial["exact_match"]

    def next_batch(step, state):
        examples = [task_spec.from_record(next(prompts)) for _ in range(t.batch_size)]
        return iteration.rollout(step, state, examples)

    state = trainer.run(state, next_batch=next_batch, update=iteration.update, data_iter=prompts,
                        evaluate=lambda done, state: evaluate(config.eval.num_examples, state),
                        extra={"seed": t.seed})
    final = evaluate(config.eval.final_num_examples, state)
    trainer.write(int(state.step), {f"eval/{k}": v for k, v in final.items()})
    log(f"step {int(state.step)}: held-out exact match {final['exact_match']:.1%} on {final['examples']}")
    accuracy, count = final["exact_match"], final["examples"]
    summary = {"step": int(state.step), "exact_match": accuracy, "eval_examples": count,
               "initial_exact_match": initial, "final_reward": trainer.last_scalars.get("reward"),
               "train_seconds": round(trainer.seconds, 1), "task": task, "mesh": placement.shape}
    if initial is None:  # resumed: the step-0 evaluation is in the metrics file
        summary["initial_exact_match"] = read_metrics(workdir).get(0, {}).get("eval/exact_match")
    trainer.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary
