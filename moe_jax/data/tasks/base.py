"""What every synthetic verifiable task shares: the example record, the task
descriptor, and deterministic train/test splits that can never overlap.

Splits. A problem's split is a pure function of its canonical key (for most
tasks the prompt string): the key is hashed and the hash decides "train" or
"test". Train and test therefore share no problem whatever their sizes, seeds or
generation order, and a test set built today stays disjoint from a train set
built next year with a larger `num_examples`. Within a split, problems are
deduplicated by the same key.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Example:
    """One problem. Task modules subclass it to add the fields `verify` needs.

    prompt:   what the model is shown, ending in the task's delimiter, e.g. "64-973-75=".
    solution: the worked solution the model is trained to write after the prompt;
              it ends with ">" followed by the final answer.
    answer:   the final answer alone, as it appears after the last ">".
    """

    prompt: str
    solution: str
    answer: str


def to_python(value: Any) -> Any:
    """Turns what a record reader returns into plain Python values.

    TFDS array_record sources give `bytes` for text, numpy integers for scalars
    and numpy arrays or lists for sequences; Examples hold str, int and tuples.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.ndarray | list | tuple):
        return tuple(to_python(v) for v in value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def field(example_or_fields: Any, name: str) -> Any:
    """Reads `name` from an Example, or from a mapping such as a TFDS record."""
    if isinstance(example_or_fields, Mapping):
        return to_python(example_or_fields[name])
    return getattr(example_or_fields, name)


@dataclasses.dataclass(frozen=True)
class Task:
    """A synthetic task as the rest of the library sees it (`TASKS[name]`).

    generate(rng, **difficulty) -> Example   one random problem
    verify(example_or_fields, response) -> bool   never raises on bad responses
    canonical_key(example) -> str            identity used for splits and dedup
    """

    name: str
    example_cls: type[Example]
    generate: Callable[..., Example]
    verify: Callable[[Any, str], bool]
    canonical_key: Callable[[Example], str]
    default_difficulty: Mapping[str, Any]

    def from_record(self, record: Mapping[str, Any] | Example) -> Example:
        """Rebuilds the task's Example from a stored record (e.g. a TFDS row)."""
        if isinstance(record, Example):
            return record
        names = [f.name for f in dataclasses.fields(self.example_cls)]
        return self.example_cls(**{n: field(record, n) for n in names})

    def difficulty(self, **overrides) -> dict[str, Any]:
        """The default difficulty with `overrides` applied; unknown keys raise."""
        unknown = set(overrides) - set(self.default_difficulty)
        if unknown:
            raise TypeError(
                f"task {self.name!r} has no difficulty parameters {sorted(unknown)};"
                f" known: {sorted(self.default_difficulty)}")
        return {**self.default_difficulty, **overrides}


def split_of(key: str, test_fraction: float) -> str:
    """'test' for a stable pseudo-random `test_fraction` of keys, else 'train'.

    blake2b rather than Python's `hash`, which is salted per process.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    unit = int.from_bytes(digest, "big") / 2.0**64
    return "test" if unit < test_fraction else "train"


def generate_split(task: Task, split: str, num_examples: int, *, seed: int,
                   test_fraction: float = 0.1, **difficulty) -> list[Example]:
    """`num_examples` distinct problems of `split`, the same for the same arguments.

    Candidates come from a random stream seeded by (seed, split); those whose key
    hashes to the other split, or that were already drawn, are skipped. Raises
    ValueError when the difficulty allows too few distinct problems.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    params = task.difficulty(**difficulty)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    share = test_fraction if split == "test" else 1.0 - test_fraction
    # Generous bound: the expected number of draws is num_examples / share while
    # duplicates are rare; hitting it means the problem space is nearly exhausted.
    max_draws = int(20 * num_examples / share) + 1000
    examples, seen = [], set()
    for _ in range(max_draws):
        if len(examples) == num_examples:
            return examples
        example = task.generate(rng, **params)
        key = task.canonical_key(example)
        if key in seen or split_of(key, test_fraction) != split:
            continue
        seen.add(key)
        examples.append(example)
    if len(examples) == num_examples:
        return examples
    raise ValueError(
        f"{task.name}: found only {len(examples)} distinct {split} problems in"
        f" {max_draws} draws with difficulty {params}; ask for fewer examples or a"
        " harder difficulty")
