"""SPCT's rules by hand: verdicts, Voting@k sums, meta-RM filtering, RFT acceptance, reward."""

import numpy as np
import pytest

from moe_jax.grm.scores import ParsedScores
from moe_jax.grm.voting import (changes_vote, default_k_meta, meta_keep, metarm_best,
                                predicted_best,
                                rft_accept, rft_select, rule_reward, verdict_correct, vote,
                                voting_best)

MALFORMED = ParsedScores(None, "cut off")


def s(*scores):
    return ParsedScores(tuple(scores))


def test_predicted_best_needs_a_strict_maximum():
    assert predicted_best((2, 9)) == 1
    assert predicted_best((7, 3, 5)) == 0
    assert predicted_best((8, 8)) is None  # a tie singles out nothing
    assert predicted_best((8, 8, 1)) is None
    assert predicted_best(None) is None and predicted_best(()) is None


def test_voting_sums_scores_over_trajectories():
    # [2, 9] + [6, 5] + [7, 3] = [15, 17]: response 1 wins although two of the three
    # trajectories prefer response 0, because the scores' margins are summed.
    trajectories = [s(2, 9), s(6, 5), s(7, 3)]
    total, voters = vote(trajectories, 2)
    np.testing.assert_array_equal(total, [15, 17])
    assert voters == 3
    assert voting_best(trajectories, 2) == 1


def test_malformed_and_wrong_length_trajectories_do_not_vote():
    total, voters = vote([s(2, 9), MALFORMED, s(1, 2, 3)], 2)
    np.testing.assert_array_equal(total, [2, 9])
    assert voters == 1
    assert voting_best([MALFORMED, MALFORMED], 2) is None


def test_voting_tie_is_no_verdict():
    assert voting_best([s(9, 2), s(2, 9)], 2) is None  # [11, 11]


def test_meta_keep_takes_the_best_rated_half():
    assert meta_keep([0.1, 0.9, -0.3, 0.5], 2) == [1, 3]
    assert meta_keep([0.5, 0.5, 0.1], 1) == [0]  # the earlier one wins a tie
    assert default_k_meta(8) == 4 and default_k_meta(1) == 1 and default_k_meta(3) == 1
    with pytest.raises(ValueError, match="k_meta"):
        meta_keep([1.0], 0)


def test_metarm_filters_before_voting():
    # All four vote: [9+8+1+2, 2+3+9+9] = [20, 23] -> response 1.
    # The meta RM trusts the first two (ratings 2.0, 1.5 > 0.2, -1.0): [17, 5] -> response 0.
    trajectories = [s(9, 2), s(8, 3), s(1, 9), s(2, 9)]
    ratings = [2.0, 1.5, 0.2, -1.0]
    assert voting_best(trajectories, 2) == 1
    assert metarm_best(trajectories, ratings, 2) == 0
    assert metarm_best(trajectories, ratings, 2, k_meta=4) == 1  # keeping all = voting


def test_metarm_never_keeps_a_malformed_trajectory():
    # The malformed one is rated highest but cannot vote; it is skipped, not kept.
    assert metarm_best([MALFORMED, s(2, 9), s(9, 1)], [5.0, 1.0, 0.0], 2, k_meta=1) == 1
    with pytest.raises(ValueError, match="meta_scores"):
        metarm_best([s(1, 2)], [0.1, 0.2], 2)


def test_a_tie_for_every_response_cannot_move_a_vote():
    assert changes_vote(s(2, 9), 2) and changes_vote(s(5, 5, 1), 3)
    assert not changes_vote(s(7, 7), 2) and not changes_vote(s(4, 4, 4), 3)
    assert not changes_vote(MALFORMED, 2) and not changes_vote(s(2, 9), 3)  # wrong count


def test_metarm_can_drop_ties_to_keep_verdicts_that_say_something():
    # The tie (8, 8) is rated highest. Kept with k_meta = 2 next to the wrong (9, 3), the
    # vote is [17, 11] -> response 0; dropped, the slot goes to (2, 9): [11, 12] -> 1.
    trajectories = [s(8, 8), s(9, 3), s(2, 9), s(3, 8)]
    ratings = [3.0, 2.0, 1.0, 0.0]
    assert metarm_best(trajectories, ratings, 2, k_meta=2) == 0
    assert metarm_best(trajectories, ratings, 2, k_meta=2, drop_uniform=True) == 1
    # With only ties and malformed ones left, there is still a vote: a tie, no verdict.
    assert metarm_best([s(5, 5), MALFORMED], [1.0, 2.0], 2, k_meta=1, drop_uniform=True) is None


def test_rft_accepts_only_a_strictly_first_best():
    assert rft_accept(s(2, 9), best=1)
    assert not rft_accept(s(9, 2), best=1)  # wrong verdict
    assert not rft_accept(s(9, 9), best=1)  # tie
    assert not rft_accept(MALFORMED, best=1)
    assert verdict_correct(s(1, 3, 2), best=1)


def test_rft_select_drops_inputs_that_are_too_easy():
    samples = [s(2, 9), s(9, 2), s(3, 8), MALFORMED]
    assert rft_select(samples, best=1) == [0, 2]
    easy = [s(2, 9), s(1, 8)]
    assert rft_select(easy, best=1) == []
    assert rft_select(easy, best=1, drop_too_easy=False) == [0, 1]


def test_rule_reward_is_plus_minus_one():
    assert rule_reward(s(2, 9), best=1) == 1.0
    assert rule_reward(s(9, 2), best=1) == -1.0
    assert rule_reward(s(5, 5), best=1) == -1.0
    assert rule_reward(MALFORMED, best=0) == -1.0


def test_scaling_accuracy_averages_disjoint_groups_of_k():
    from moe_jax.grm.evaluate import scaling_accuracy

    # One input, best = 0, four samples. k=1: verdicts 0, 1, 0, 0 -> 3/4 right.
    # k=2: (9,2)+(2,9) = (11,11) a tie, wrong; (9,1)+(8,2) = (17,3) right -> 1/2.
    # k=4: (28,14) right -> 1.
    # MetaRM@2 keeps the better-rated one of each pair: samples 0 and 3, both right -> 1.
    parsed = [[s(9, 2), s(2, 9), s(9, 1), s(8, 2)]]
    ratings = [[1.0, 0.0, 0.0, 1.0]]
    table = scaling_accuracy(parsed, ratings, [0], [2], ks=(1, 2, 4))
    assert table["voting@1"] == 0.75 and table["voting@2"] == 0.5 and table["voting@4"] == 1.0
    assert table["metarm@1"] == 0.75 and table["metarm@2"] == 1.0
    with pytest.raises(ValueError, match="k=3"):
        scaling_accuracy(parsed, ratings, [0], [2], ks=(3,))


def test_meta_records_say_yes_only_for_a_verdict_that_singles_out_the_best():
    from moe_jax.grm.format import META_NO, META_YES, trajectory
    from moe_jax.grm.preferences import labelled
    from moe_jax.grm.spct import meta_labelled, yes_fraction
    from moe_jax.data.tasks.base import Example

    problem = Example("12+30=", "+210+030=+240>42", "42")
    pair = labelled(problem, ["+210+030=+240>42", "+210+030=+250>52"])
    assert pair.best == 0
    records = meta_labelled(pair, [trajectory("p", "c", [9, 3]), trajectory("p", "c", [3, 9]),
                                   trajectory("p", "c", [9, 9]), "Critique: cut off"])
    assert [r["solution"] for r in records] == [META_YES, META_NO, META_NO, META_NO]
    assert all(r["prompt"].startswith(pair.prompt) for r in records)
    assert yes_fraction(records) == 0.25
    # decisive_only keeps the two verdicts that can move a vote: the tie and the cut-off
    # trajectory are what the parser already tells apart, not the meta RM's job.
    decisive = meta_labelled(pair, [trajectory("p", "c", [9, 3]), trajectory("p", "c", [3, 9]),
                                    trajectory("p", "c", [9, 9]), "Critique: cut off"],
                             decisive_only=True)
    assert [r["solution"] for r in decisive] == [META_YES, META_NO]
