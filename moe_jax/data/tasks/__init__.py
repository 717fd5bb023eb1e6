"""Synthetic tasks whose answers a program can check (for SFT, GRPO and evals), and one
plain-text corpus built from local files (docstrings: a language model with entropy).

`TASKS[name]` is a `Task`: `generate(rng, **difficulty)`, `verify(example,
response)`, `canonical_key(example)`, `from_record(record)`. Splits come from
`generate_split(TASKS[name], "train"|"test", n, seed=...)`, which never lets a
test problem into train.
"""

from moe_jax.data.tasks import arithmetic, countdown, docstrings
from moe_jax.data.tasks.base import SPLITS, Example, Task, generate_split, split_of

TASKS: dict[str, Task] = {
    "arithmetic": arithmetic.TASK,
    "countdown": countdown.TASK,
    "docstrings": docstrings.TASK,
}


def get_task(name: str) -> Task:
    """The task registered as `name`; a clear error for unknown names."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


__all__ = ["SPLITS", "TASKS", "Example", "Task", "generate_split", "get_task", "split_of"]
