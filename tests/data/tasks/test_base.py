"""Tests for moe_jax.data.tasks.base (splits, records) through the registry."""

import dataclasses

import numpy as np
import pytest

from moe_jax.data.tasks import TASKS, generate_split, get_task, split_of


@pytest.mark.parametrize("name", sorted(TASKS))
def test_train_and_test_share_no_problem(name):
    task = TASKS[name]
    train = generate_split(task, "train", 1500, seed=0)
    test = generate_split(task, "test", 300, seed=0)
    # A different seed and size must not leak either: the split is a function of the key.
    more_train = generate_split(task, "train", 500, seed=7)
    train_keys = {task.canonical_key(e) for e in train + more_train}
    test_keys = {task.canonical_key(e) for e in test}
    assert not train_keys & test_keys
    assert not {e.prompt for e in train + more_train} & {e.prompt for e in test}
    # Deduplicated within a split.
    assert len({task.canonical_key(e) for e in train}) == len(train)
    assert len(test_keys) == len(test)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_split(name):
    task = TASKS[name]
    assert generate_split(task, "test", 50, seed=1) == generate_split(task, "test", 50, seed=1)
    assert generate_split(task, "test", 50, seed=1) != generate_split(task, "test", 50, seed=2)
    # Asking for more only appends: the first 50 stay the same.
    assert generate_split(task, "test", 80, seed=1)[:50] == generate_split(task, "test", 50, seed=1)


def test_split_of_is_stable_and_roughly_proportional():
    # blake2b is fixed across processes and Python versions (unlike hash()).
    assert [split_of(k, 0.5) for k in ("1+1=", "2+2=", "3+3=")] == [
        split_of(k, 0.5) for k in ("1+1=", "2+2=", "3+3=")]
    keys = [f"{i}+{i}=" for i in range(4000)]
    share = sum(split_of(k, 0.1) == "test" for k in keys) / len(keys)
    assert 0.08 < share < 0.12


def test_small_problem_space_raises():
    # 2 one-digit operands with + or -: at most 10*10*2 = 200 problems.
    with pytest.raises(ValueError, match="distinct train problems"):
        generate_split(TASKS["arithmetic"], "train", 1000, seed=0, max_operands=2, max_digits=1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        generate_split(TASKS["arithmetic"], "validation", 10, seed=0)
    with pytest.raises(TypeError, match="max_digitz"):
        generate_split(TASKS["arithmetic"], "train", 10, seed=0, max_digitz=3)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("sudoku")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_from_record_round_trips_stored_types(name):
    task = TASKS[name]
    for example in generate_split(task, "train", 20, seed=0):
        # What a TFDS array_record source hands back: bytes, numpy scalars/arrays.
        record = {}
        for key, value in dataclasses.asdict(example).items():
            if isinstance(value, str):
                value = value.encode()
            elif isinstance(value, tuple):
                value = np.asarray(value, np.int64)
            elif isinstance(value, int):
                value = np.int64(value)
            record[key] = value
        rebuilt = task.from_record(record)
        assert rebuilt == example
        assert task.from_record(example) is example
        assert task.verify(record, example.solution)
