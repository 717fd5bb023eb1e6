"""The membership attack's scores against their definitions, counted pair by pair."""

import itertools

import numpy as np
import pytest

from moe_jax.analysis.membership import auc, best_advantage, sample_indices


def brute_auc(members, others):
    pairs = list(itertools.product(members, others))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def brute_advantage(members, others):
    """max over every threshold t of P(member >= t) - P(non-member >= t)."""
    thresholds = np.concatenate([members, others, [np.inf]])
    return max(np.mean(members >= t) - np.mean(others >= t) for t in thresholds)


@pytest.mark.parametrize("seed", range(3))
def test_auc_and_advantage_are_their_definitions(seed):
    rng = np.random.default_rng(seed)
    members = np.round(rng.normal(0.5, 1.0, 37), 1)  # rounded: ties between the sets occur
    others = np.round(rng.normal(0.0, 1.0, 29), 1)
    assert auc(members, others) == pytest.approx(brute_auc(members, others), abs=1e-12)
    assert best_advantage(members, others) == pytest.approx(brute_advantage(members, others), abs=1e-12)


def test_the_ends_of_the_scale():
    assert auc([2.0, 3.0], [0.0, 1.0]) == 1.0 and auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert auc([1.0, 1.0], [1.0, 1.0]) == 0.5  # indistinguishable: a coin
    assert best_advantage(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0


def test_candidates_are_drawn_across_the_split_not_its_head():
    picked = sample_indices(1000, 500, seed=0)
    assert len(set(picked)) == 500 and 0 <= min(picked) and max(picked) < 1000
    # Both halves of an ordered split are represented (the first 500 would be one half).
    assert 200 < sum(i >= 500 for i in picked) < 300
    assert picked == sample_indices(1000, 500, seed=0) and picked != sample_indices(1000, 500, seed=1)
    assert sample_indices(16, 16, seed=3) == list(range(16))
