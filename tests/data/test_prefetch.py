"""Prefetching keeps the batches and, crucially, the resumable state of what was consumed."""

import grain
import numpy as np
import pytest

from moe_jax.data.prefetch import Prefetch


def numbers(n=20):
    return iter(grain.MapDataset.range(n).map(lambda x: np.array([x, x * x])).to_iter_dataset())


def test_same_batches_and_state_of_the_consumed_batch():
    plain, ahead = numbers(), Prefetch(numbers(), depth=3)
    for _ in range(5):
        np.testing.assert_array_equal(next(plain), next(ahead))
        assert ahead.get_state() == plain.get_state()  # not the state 3 batches ahead
    resumed = Prefetch(numbers())
    resumed.set_state(ahead.get_state())
    np.testing.assert_array_equal(next(resumed), next(plain))
    ahead.close(), resumed.close()


def test_end_of_data_and_errors_reach_the_consumer():
    assert len(list(Prefetch(numbers(4)))) == 4

    def broken():
        yield np.zeros(2)
        raise KeyError("missing field 'solution'")

    class Iter:
        def __init__(self):
            self.gen = broken()

        def __next__(self):
            return next(self.gen)

        def get_state(self):
            return {}

    it = Prefetch(Iter())
    next(it)
    with pytest.raises(KeyError, match="solution"):
        next(it)


def test_set_state_after_start_is_refused():
    it = Prefetch(numbers())
    next(it)
    with pytest.raises(RuntimeError, match="before the first batch"):
        it.set_state({})
    it.close()
