"""Rule-based rewards for the verifiable tasks: correctness (the task's own verifier)
plus a format reward, as DeepSeek-R1-Zero uses (accuracy + format, no learned model).

Format, per task (the shape of `solution` in moe_jax/data/tasks):
  arithmetic  a worked chain, then exactly one ">" and an integer:  "...=+1410>141"
  countdown   steps, then exactly one ">" and an expression over digits, + - * / and
              parentheses:                                          "...=104>25*4-3+7"
A correct answer in a malformed response (e.g. two ">") still earns the correctness
reward if the verifier accepts it; the format reward is what teaches the shape.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from moe_jax.data.tasks import get_task

FORMATS = {
    "arithmetic": re.compile(r"[^>]*>[+-]?\d+"),
    "countdown": re.compile(r"[^>]*>[\d+\-*/()]+"),
}


def format_ok(task: str, response: str) -> bool:
    """True iff `response` (decoded, without <eos>) has the task's answer format."""
    if task not in FORMATS:
        raise ValueError(f"no format rule for task {task!r}; known: {sorted(FORMATS)}")
    return isinstance(response, str) and FORMATS[task].fullmatch(response.strip()) is not None


def task_rewards(task: str, examples: Sequence, responses: Sequence[str], *,
                 correct_weight: float = 1.0, format_weight: float = 0.1) -> dict[str, np.ndarray]:
    """Per response: reward = correct_weight * correct + format_weight * format_ok.

    examples[i] is the Example (or record) responses[i] answers; with G responses per
    prompt, repeat each example G times. -> {"reward", "correct", "format"} float32 [N].
    """
    if len(examples) != len(responses):
        raise ValueError(f"{len(examples)} examples but {len(responses)} responses")
    verifier = get_task(task)
    correct = np.array([bool(verifier.verify(e, r)) for e, r in zip(examples, responses)], np.float32)
    formatted = np.array([format_ok(task, r) for r in responses], np.float32)
    return {"reward": correct_weight * correct + format_weight * formatted,
            "correct": correct, "format": formatted}
