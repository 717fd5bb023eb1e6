"""Which arithmetic answers are the flawed teacher's slip (moe_jax/data/tasks/arithmetic.py,
difficulty `carry_slip`), which are right, and which are some other mistake.

A model trained on a teacher that forgets the units carry imitates it; under greedy
decoding it forgets the carry at every step where one occurs. This counts, on held-out
problems, how many greedy answers are

    right     the true value
    slip      what the chain gives when every step forgets its units carry or borrow
              (and that differs from the true value)
    other     anything else, malformed answers included

    counts, problems = greedy_slip_counts(model, held_out, config)

`model` is a loaded model (moe_jax.train.loader), `held_out` its run's held-out records
(moe_jax.data.splits) and `config` the run's config. From the command line:
`moe-jax slips WORKDIR [--config X] [--examples N]`.
"""

from __future__ import annotations

import re

from moe_jax.analysis.exact_match import exact_match
from moe_jax.data.tasks import get_task
from moe_jax.data.tasks.arithmetic import extract_answer, worked_solution
from moe_jax.data.tokenizer import get_tokenizer

_TERM = re.compile(r"([+-]?)(\d+)")


def slipped_answer(prompt: str) -> int:
    """The final total when every step forgets its units carry or borrow (+ and - only)."""
    terms = _TERM.findall(prompt.rstrip("="))
    operands = [int(digits) for _, digits in terms]
    ops = [sign for sign, _ in terms[1:]]
    if any(op not in "+-" or not op for op in ops):
        raise ValueError(f"prompt {prompt!r}: expected terms joined by + and -")
    return int(worked_solution(operands, ops, slips=(True,) * len(ops))[0].rsplit(">", 1)[1])


def classify(prompt: str, answer: str, response: str | None) -> str:
    """'right', 'slip' or 'other' for one response to `prompt` (true answer `answer`)."""
    predicted = extract_answer(response) if response else None
    if predicted == int(answer):
        return "right"
    if predicted is not None and predicted == slipped_answer(prompt):
        return "slip"
    return "other"


def slip_counts(records) -> dict[str, int]:
    """records: (prompt, answer, response) triples -> counts of each class, plus how many
    problems have a slip that changes the answer at all ("slippable")."""
    counts = {"right": 0, "slip": 0, "other": 0, "slippable": 0}
    for prompt, answer, response in records:
        counts[classify(prompt, answer, response)] += 1
        counts["slippable"] += slipped_answer(prompt) != int(answer)
    return counts


def greedy_slip_counts(model, held_out, config, num_examples: int | None = None) -> tuple[dict, int]:
    """Greedy answers of `model` (model_config, params, router_bias) to the first
    `num_examples` of the `held_out` records (default: config.eval.final_num_examples),
    decoded as `config` evaluates (data.task, data.tokenizer, eval.batch_size,
    eval.max_new_tokens) and classified: -> (slip_counts, problems)."""
    n = num_examples or config.eval.final_num_examples
    task = get_task(config.data.task)
    answers = {e.prompt: e.answer for e in (task.from_record(held_out[i]) for i in range(len(held_out)))}
    _, count, shown = exact_match(model.model_config, model.params, model.router_bias, held_out,
                                  get_tokenizer(config.data.tokenizer), task=config.data.task,
                                  num_examples=n, batch_size=config.eval.batch_size,
                                  max_new_tokens=config.eval.max_new_tokens, show=n)
    return slip_counts((p, answers[p], r) for p, r, _ in shown), count
