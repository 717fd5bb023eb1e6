"""The GRM as GRPO's reward: selected by rl.reward, rewards in [0, 1] per response."""

import ml_collections
import numpy as np
import pytest

from helpers import save_untrained_grm
from moe_jax.config import load_config
from moe_jax.data.tasks.base import Example
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.grm.judge import pairs
from moe_jax.models.config import ConfigError
from moe_jax.jobs import grpo as grpo_job


def test_pairings():
    assert pairs(3, "round_robin") == [(0, 1), (0, 2), (1, 2)]
    assert pairs(3, "both_orders") == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert pairs(4, "cyclic") == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert pairs(2, "cyclic") == [(0, 1)]  # (1, 0) would judge the same pair twice
    with pytest.raises(ValueError, match="pairing"):
        pairs(3, "swiss")


def test_reward_option_is_checked():
    config = load_config("experiments/grpo_reasoning.py:tiny")
    tokenizer = get_tokenizer("char")
    grpo_job.validate(config)
    assert grpo_job.REWARDS["verifier"](config, tokenizer).func.__name__ == "task_rewards"
    config.rl.reward = "oracle"
    with pytest.raises(ConfigError, match="rl.reward"):
        grpo_job.validate(config)
    config.rl.reward = "grm"
    with pytest.raises(ConfigError, match="rl.grm_from"):
        grpo_job.validate(config)


@pytest.mark.slow
def test_grm_reward_scores_every_response_of_a_group(tmp_path):
    save_untrained_grm(tmp_path / "grm" / "models" / "rl")

    config = load_config("experiments/grpo_reasoning.py:tiny")
    config.rl = ml_collections.ConfigDict(dict(config.rl, reward="grm", group_size=2,
                                               grm_from=str(tmp_path / "grm")))
    reward_fn = grpo_job.REWARDS["grm"](config, get_tokenizer("char"))
    examples = [Example("1+2=", "+10+20=+30>3", "3")] * 2 + [Example("5-7=", "+50-70=-20>-2", "-2")] * 2
    out = reward_fn(examples, ["+10+20=+30>3", "+10+20=+40>4", "x", "+50-70=-20>-2"])
    assert out["reward"].shape == (4,) and np.all((out["reward"] >= 0) & (out["reward"] <= 1))
    np.testing.assert_array_equal(out["correct"], [1, 0, 0, 1])


def test_both_orders_cancel_a_judge_that_always_prefers_r1(monkeypatch):
    """A judge that always scores R1 9 and R2 3: round robin ranks sample 0 first, both
    orders rate every sample alike. The answer view shows the GRM final answers only."""
    from moe_jax.grm import judge

    seen = []

    def always_r1(model_config, params, router_bias, inputs, tokenizer, *, k, **_):
        seen.extend(inputs)
        return [["Final Scores: [[9, 3]]"] * k for _ in inputs]

    monkeypatch.setattr(judge, "sample_trajectories", always_r1)
    config = ml_collections.ConfigDict({"max_seq_len": 512})
    samples = [["+10+20=+30>3", "+10+20=+40>4", "+10+20=+30>3", "junk"]]
    common = dict(prompt_len=16, max_new_tokens=8, rng=None, batch_size=4)
    tok = get_tokenizer("char")
    rr = judge.judge_candidates(config, None, None, ["1+2="], samples, tok,
                                pairing="round_robin", **common)
    assert rr[0, 0] == 9 and rr[0, 3] == 3 and rr[0].argmax() == 0
    seen.clear()
    both = judge.judge_candidates(config, None, None, ["1+2="], samples, tok,
                                  pairing="both_orders", view="answer", **common)
    np.testing.assert_allclose(both[0], 6.0)
    assert len(seen) == 12 and "Q:1+2=\nR1:>3\nR2:>4\n" in seen
    assert all("=" not in line for p in seen for line in p.splitlines()[1:])
