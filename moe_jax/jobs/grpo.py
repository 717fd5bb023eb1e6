"""The `grpo` job: an SFT model (trained first when the config asks), then GRPO.

The starting model is `rl.init_from` (an SFT workdir, or a model directory such as an
imported Hugging Face checkpoint); when that is empty, the `sft` section (a whole
training config) is trained into <workdir>/sft first, resuming like any training run.
Rewards are named by `rl.reward` (REWARDS), or come from the experiment file's own
`reward(config, tokenizer)`.
"""

from __future__ import annotations

import os

from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.grm.reward import reward_fn_from_config
from moe_jax.jobs.pretrain import validate as validate_training
from moe_jax.jobs.summary import Summary
from moe_jax.models.config import ConfigError
from moe_jax.rl.loop import train_grpo, validate_rl_config, verifier_reward
from moe_jax.train.loop import train_and_evaluate

# rl.reward -> reward_fn factory (config, tokenizer) -> reward_fn(examples, responses).
REWARDS = {
    "verifier": lambda config, tokenizer: verifier_reward(config),
    "grm": reward_fn_from_config,  # the generative reward model saved in rl.grm_from
}


def validate(config) -> None:
    validate_training(config)
    validate_rl_config(config)
    r = config.rl
    name = r.get("reward", "verifier")
    if name not in REWARDS:
        raise ConfigError("rl.reward", name, f"one of {sorted(REWARDS)}")
    if name == "grm" and not r.get("grm_from"):
        raise ConfigError("rl.grm_from", r.get("grm_from"), "a GRM workdir (experiments/grm_spct.py)")
    if not r.init_from:
        if not config.get("sft"):
            raise ConfigError("rl.init_from", r.init_from, "an SFT workdir or model directory, or an "
                              "`sft` section to train one")
        validate_training(config.sft)


def sft_workdir(config, workdir: str, log=print) -> str:
    """rl.init_from, or <workdir>/sft trained from the `sft` section until it has finished."""
    if config.rl.init_from:
        return config.rl.init_from
    sft_dir = os.path.join(workdir, "sft")
    if not os.path.exists(os.path.join(sft_dir, "summary.json")):
        log(f"training the SFT model into {sft_dir}")
        train_and_evaluate(config.sft, sft_dir, log=log)
    return sft_dir


def run(config, workdir: str, *, experiment=None, log=print) -> Summary:
    validate(config)
    tokenizer = get_tokenizer(config.data.tokenizer)
    if experiment is not None and hasattr(experiment, "reward"):
        reward_fn = experiment.reward(config, tokenizer)
    else:
        reward_fn = REWARDS[config.rl.get("reward", "verifier")](config, tokenizer)
    init_dir = sft_workdir(config, workdir, log)
    result = train_grpo(config, workdir, init_dir, reward_fn=reward_fn, log=log)
    initial = result.get("initial_exact_match")
    if initial is not None:
        log(f"GRPO: held-out exact match {initial:.1%} (SFT) -> {result['exact_match']:.1%} "
            f"after {result['step']} steps")
    return Summary(job="grpo", metric="held-out exact match", value=result["exact_match"],
                   steps=result["step"], seconds=result["train_seconds"],
                   examples=result["eval_examples"], unit=f"{result['task']} problems", details=result)
