import numpy as np
import pytest

from moe_jax.data.tasks import get_task
from moe_jax.rl.rewards import format_ok, task_rewards


@pytest.mark.parametrize("task", ["arithmetic", "countdown"])
def test_rewards_for_correct_malformed_and_wrong_responses(task):
    example = get_task(task).generate(np.random.default_rng(0))
    chain = example.solution.split(">")[0]
    responses = [example.solution,  # correct, well formed: 1 + 0.1
                 "garbage",  # neither
                 chain + ">1",  # well formed, wrong answer (1 is never right here)
                 example.solution.replace(">", ">>")]  # verifier reads after the last ">"
    out = task_rewards(task, [example] * 4, responses)
    np.testing.assert_array_equal(out["correct"], [1, 0, 0, 1])
    np.testing.assert_array_equal(out["format"], [1, 0, 1, 0])
    np.testing.assert_allclose(out["reward"], [1.1, 0.0, 0.1, 1.0], rtol=1e-6)


def test_format_rules():
    assert format_ok("arithmetic", "+650-300=+350>-53")
    assert not format_ok("arithmetic", "+650-300=+350>5 3")
    assert format_ok("countdown", "64+31=95>(64+31)*2/5")
    assert not format_ok("countdown", "64+31=95>x")
    with pytest.raises(ValueError, match="no format rule"):
        format_ok("chess", "e4")
