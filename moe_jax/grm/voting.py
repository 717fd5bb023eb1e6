"""SPCT's rules on parsed scores: verdicts, RFT acceptance, the RL reward, Voting@k and
MetaRM@k. Pure functions over `ParsedScores` (scores.py) and plain numbers.

A trajectory's *verdict* is the response its scores single out: the unique argmax.
A tie at the top singles out nothing, so it counts as a wrong verdict everywhere
below (the paper's rule: the best response must be ranked strictly first).

Voting@k sums each response's scores over k sampled trajectories (malformed ones do
not vote) and takes the verdict of the sums; summing rather than majority-voting the
argmaxes keeps the scores' confidence and widens the 1..10 range to k..10k, which is
why more samples give finer rewards. MetaRM@k first asks a meta reward model to rate
each trajectory and votes with the k_meta best-rated only (about half).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moe_jax.grm.scores import ParsedScores


def predicted_best(scores) -> int | None:
    """Index of the strictly highest score, None on a tie or no scores."""
    if scores is None or len(scores) == 0:
        return None
    scores = np.asarray(scores, np.float64)
    top = scores.max()
    winners = np.flatnonzero(scores == top)
    return int(winners[0]) if len(winners) == 1 else None


def verdict_correct(parsed: ParsedScores, best: int) -> bool:
    """True iff the trajectory is well formed and ranks response `best` strictly first."""
    return parsed.ok and predicted_best(parsed.scores) == best


def rft_accept(parsed: ParsedScores, best: int) -> bool:
    """Rejective fine-tuning keeps a sampled trajectory iff its verdict is right."""
    return verdict_correct(parsed, best)


def rft_select(trajectories: Sequence[ParsedScores], best: int, *, drop_too_easy: bool = True):
    """Indices of the accepted trajectories of one input.

    drop_too_easy: when every sample is accepted the input teaches nothing new, and SPCT
    drops it (its trajectories are not fine-tuned on).
    """
    accepted = [i for i, p in enumerate(trajectories) if rft_accept(p, best)]
    if drop_too_easy and len(accepted) == len(trajectories):
        return []
    return accepted


def rule_reward(parsed: ParsedScores, best: int) -> float:
    """SPCT's online RL reward: +1 if the scores single out the best response, else -1
    (malformed trajectories included)."""
    return 1.0 if verdict_correct(parsed, best) else -1.0


def casts_vote(parsed: ParsedScores, num_responses: int) -> bool:
    """True iff the trajectory votes: well formed, with one score per response."""
    return parsed.ok and len(parsed.scores) == num_responses


def vote(trajectories: Sequence[ParsedScores], num_responses: int):
    """-> (summed scores float [n], number of trajectories that voted)."""
    total = np.zeros(num_responses, np.float64)
    voters = 0
    for parsed in trajectories:
        if casts_vote(parsed, num_responses):
            total += np.asarray(parsed.scores, np.float64)
            voters += 1
    return total, voters


def voting_best(trajectories: Sequence[ParsedScores], num_responses: int) -> int | None:
    """Voting@k's verdict: the unique argmax of the summed scores (None without voters)."""
    total, voters = vote(trajectories, num_responses)
    return predicted_best(total) if voters else None


def meta_keep(meta_scores, k_meta: int) -> list[int]:
    """Indices of the k_meta trajectories the meta RM rates highest (earlier wins ties),
    in their original order."""
    meta_scores = np.asarray(meta_scores, np.float64)
    if not isinstance(k_meta, int) or k_meta < 1:
        raise ValueError(f"k_meta: expected a positive integer, got {k_meta!r}")
    order = sorted(range(len(meta_scores)), key=lambda i: (-meta_scores[i], i))
    return sorted(order[:k_meta])


def default_k_meta(k: int) -> int:
    """About half of the k samples, at least one (the paper keeps k_meta = k / 2)."""
    return max(1, k // 2)


def changes_vote(parsed: ParsedScores, num_responses: int) -> bool:
    """True iff the trajectory's scores can move a vote: well formed, one per response,
    and not all equal (equal scores add the same to every response)."""
    return casts_vote(parsed, num_responses) and len(set(parsed.scores)) > 1


def metarm_best(trajectories: Sequence[ParsedScores], meta_scores, num_responses: int,
                k_meta: int | None = None, *, drop_uniform: bool = False) -> int | None:
    """MetaRM@k's verdict: vote with the k_meta best-rated trajectories only.

    Malformed trajectories are rated -inf: they cannot vote, so keeping one would only
    shrink the vote. drop_uniform: so are trajectories whose scores are all equal (a tie
    for every response), which vote but cannot move the verdict; the k_meta slots then
    go to the best-rated verdicts that say something.
    """
    if len(trajectories) != len(meta_scores):
        raise ValueError(f"meta_scores: expected one per trajectory ({len(trajectories)}), "
                         f"got {len(meta_scores)}")
    k_meta = default_k_meta(len(trajectories)) if k_meta is None else k_meta
    usable = (lambda p: changes_vote(p, num_responses)) if drop_uniform else (lambda p: p.ok)
    rated = [m if usable(p) else -np.inf for p, m in zip(trajectories, meta_scores)]
    kept = meta_keep(rated, k_meta)
    return voting_best([trajectories[i] for i in kept], num_responses)
