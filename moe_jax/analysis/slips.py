"""Which arithmetic answers are the flawed teacher's slip (moe_jax/data/tasks/arithmetic.py,
difficulty `carry_slip`), which are right, and which are some other mistake.

A model trained on a teacher that forgets the units carry imitates it; under greedy
decoding it forgets the carry at every step where one occurs. This counts, on held-out
problems, how many greedy answers are

    right     the true value
    slip      what the chain gives when every step forgets its units carry or borrow
              (and that differs from the true value)
    other     anything else, malformed answers included

    python -m moe_jax.analysis.slips WORKDIR [CONFIG] [NUM_EXAMPLES]

WORKDIR is a training or GRPO run (its newest checkpoint is read); CONFIG is the
experiment it ran (default: the config the run recorded in WORKDIR/config.json).
"""

from __future__ import annotations

import re
import sys

from moe_jax.data.tasks.arithmetic import extract_answer, worked_solution

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


def run_slip_counts(workdir: str, config=None, num_examples: int | None = None) -> tuple[dict, int]:
    """Greedy answers of the newest model in `workdir` (a training or GRPO run) to the
    first `num_examples` held-out problems of `config` (default: the config the run
    recorded; its eval.final_num_examples), classified: -> (slip_counts, problems)."""
    from moe_jax.data.tasks import get_task
    from moe_jax.data.tokenizer import get_tokenizer
    from moe_jax.train.evaluate import exact_match
    from moe_jax.train.loader import load_model, read_run_config
    from moe_jax.data.splits import load_data

    config = config if config is not None else read_run_config(workdir)
    if config is None:
        raise FileNotFoundError(f"{workdir} records no config.json: name the experiment it ran (CONFIG)")
    n = num_examples or config.eval.final_num_examples
    loaded = load_model(workdir, config.model)
    tokenizer = get_tokenizer(config.data.tokenizer)
    _, test = load_data(config, workdir)
    task = get_task(config.data.task)
    answers = {e.prompt: e.answer for e in (task.from_record(test[i]) for i in range(len(test)))}
    _, count, shown = exact_match(config.model, loaded.params, loaded.router_bias, test, tokenizer,
                                  task=config.data.task, num_examples=n,
                                  batch_size=config.eval.batch_size,
                                  max_new_tokens=config.eval.max_new_tokens, show=n)
    return slip_counts((p, answers[p], r) for p, r, _ in shown), count


def main(argv):
    from moe_jax.config import load_config

    if not 1 <= len(argv) <= 3:
        raise SystemExit(__doc__)
    workdir = argv[0]
    config = load_config(argv[1]) if len(argv) > 1 else None
    try:
        counts, count = run_slip_counts(workdir, config, int(argv[2]) if len(argv) > 2 else None)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    print(f"{workdir}, {count} held-out problems: "
          + ", ".join(f"{k} {v} ({v / count:.1%})" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    main(sys.argv[1:])
