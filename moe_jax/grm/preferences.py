"""Preference sets from the arithmetic task: one query, n candidate solutions, labels.

Candidates are the reference worked solution and controlled corruptions of it, each of
a mistake a solver actually makes (see teacher.py for how each is critiqued):

    carry    one running total off by +-10^j (a dropped or extra carry); the later
             totals and the answer follow from the wrong total, so only the step check
             finds it
    answer   a correct chain, then a final answer that is not the last total
    skip     one step left out; the later totals and the answer follow without it

or the policy's own samples (`sampled_sets`: the mistakes the GRM will meet when it picks
among them, best-of-n). The task's verifier is the ground truth:
a corruption that happens to reach the right answer is discarded. `best` is the index
of the one correct response, or None when a set has no unique best (all wrong or more
than one right; cold start trains on a few such sets so that the scores mean "right /
wrong" pointwise, while RFT, RL and evaluation use sets with a unique best only).

Problems come from the task's own split (moe_jax.data.tasks.generate_split), so a
held-out preference set shares no problem with a training one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from moe_jax.data.tasks import generate_split, get_task
from moe_jax.data.tasks.base import Example
from moe_jax.grm.format import grm_prompt, hinted_prompt
from moe_jax.grm.teacher import chain_width, query_terms, teacher_trajectory, write_number

CORRUPTIONS = ("carry", "answer", "skip")


@dataclasses.dataclass(frozen=True)
class PreferenceExample:
    """A GRM input with its labels; `.prompt` is what the GRM reads (so rollouts can
    sample it like any task prompt)."""

    problem: Example
    responses: tuple[str, ...]
    correct: tuple[bool, ...]
    best: int | None

    @property
    def prompt(self) -> str:
        return grm_prompt(self.problem.prompt, self.responses)

    @property
    def num_responses(self) -> int:
        return len(self.responses)


def _chain(totals: list[int], terms: list[int], width: int) -> str:
    """Worked solution text from its terms and (possibly wrong) running totals."""
    text = write_number(totals[0], width)
    for term, total in zip(terms[1:], totals[1:]):
        text += write_number(term, width) + "=" + write_number(total, width)
    return text + ">" + str(totals[-1])


def corrupt(problem: Example, kind: str, rng: np.random.Generator) -> str:
    """A wrong worked solution of `problem` with one mistake of `kind` (CORRUPTIONS)."""
    terms = query_terms(problem.prompt)
    width = chain_width(terms)
    totals = list(np.cumsum(terms).tolist())
    if kind == "carry":
        step = int(rng.integers(1, len(terms)))
        delta = int(rng.choice([-1, 1])) * 10 ** int(rng.integers(0, 2))
        wrong = totals[:step] + [t + delta for t in totals[step:]]
        return _chain(wrong, terms, width)
    if kind == "answer":
        delta = int(rng.choice([-1, 1])) * 10 ** int(rng.integers(0, 2))
        return _chain(totals, terms, width).rsplit(">", 1)[0] + ">" + str(totals[-1] + delta)
    if kind == "skip":
        step = int(rng.integers(1, len(terms)))
        kept = terms[:step] + terms[step + 1:]
        return _chain(list(np.cumsum(kept).tolist()), kept, width)
    raise ValueError(f"corruption kind {kind!r}: expected one of {CORRUPTIONS}")


def wrong_solution(problem: Example, rng: np.random.Generator, kinds=CORRUPTIONS) -> str:
    """A corrupted solution the verifier rejects (resampled until it does)."""
    verifier = get_task("arithmetic")
    for _ in range(100):
        response = corrupt(problem, kinds[int(rng.integers(len(kinds)))], rng)
        if not verifier.verify(problem, response):
            return response
    raise ValueError(f"problem {problem.prompt!r}: no corruption changes its answer")


def labelled(problem: Example, responses) -> PreferenceExample:
    """Labels candidate responses with the verifier; best = the single correct one."""
    verifier = get_task("arithmetic")
    correct = tuple(bool(verifier.verify(problem, r)) for r in responses)
    best = correct.index(True) if sum(correct) == 1 else None
    return PreferenceExample(problem, tuple(responses), correct, best)


def preference_set(split: str, num_sets: int, *, num_responses: int = 2, seed: int = 0,
                   no_best_fraction: float = 0.0, all_wrong_share: float = 0.5,
                   difficulty: dict | None = None):
    """`num_sets` preference sets over distinct problems of the task's `split`.

    Each set has one correct response at a random position and num_responses - 1
    corruptions, except a `no_best_fraction` of them that have all wrong (an
    `all_wrong_share` of those) or all right. All-wrong sets are where a GRM that copies
    a response's working as its own solution, instead of solving, is always wrong.
    """
    if num_responses < 2:
        raise ValueError(f"num_responses: expected at least 2 (a preference), got {num_responses}")
    if not 0.0 <= no_best_fraction < 1.0:
        raise ValueError(f"no_best_fraction: expected a value in [0, 1), got {no_best_fraction}")
    if not 0.0 <= all_wrong_share <= 1.0:
        raise ValueError(f"all_wrong_share: expected a value in [0, 1], got {all_wrong_share}")
    problems = generate_split(get_task("arithmetic"), split, num_sets, seed=seed,
                              **(difficulty or {}))
    rng = np.random.default_rng([seed, 7, ("train", "test").index(split)])
    sets = []
    for problem in problems:
        if rng.random() < no_best_fraction:
            all_right = rng.random() < 1.0 - all_wrong_share
            responses = [problem.solution if all_right else wrong_solution(problem, rng)
                         for _ in range(num_responses)]
        else:
            responses = [wrong_solution(problem, rng) for _ in range(num_responses - 1)]
            responses.insert(int(rng.integers(num_responses)), problem.solution)
        sets.append(labelled(problem, responses))
    return sets


def sampled_sets(problems, samples, rng: np.random.Generator, *, num_responses: int = 2,
                 no_best_fraction: float = 0.0) -> list[PreferenceExample]:
    """Preference sets from a policy's own samples; samples[i] are problem i's.

    A problem with a right sample and num_responses - 1 distinct wrong ones gives a set
    of one right and those wrong ones, in random order. A problem whose samples are all
    wrong gives an all-wrong set with probability `no_best_fraction` (so the scores stay
    pointwise, as in `preference_set`); other problems give none.
    """
    verifier = get_task("arithmetic")
    sets = []
    for problem, texts in zip(problems, samples):
        texts = [t or "" for t in texts]  # undecodable: the teacher calls it unreadable
        right = [t for t in texts if verifier.verify(problem, t)]
        wrong = list(dict.fromkeys(t for t in texts if not verifier.verify(problem, t)))
        if right and len(wrong) >= num_responses - 1:
            responses = [wrong[i] for i in rng.permutation(len(wrong))[:num_responses - 1]]
            responses.insert(int(rng.integers(num_responses)), right[0])
        elif not right and len(wrong) >= num_responses and rng.random() < no_best_fraction:
            responses = [wrong[i] for i in rng.permutation(len(wrong))[:num_responses]]
        else:
            continue
        sets.append(labelled(problem, responses))
    return sets


def cold_start_records(sets, critique: str = "verdict", hint_fraction: float = 0.0,
                       seed: int = 0) -> list[dict]:
    """SFT records (prompt = GRM input, solution = the teacher's trajectory with the
    `critique` style of moe_jax.grm.teacher).

    hint_fraction: that share of the sets with a unique best are shown with the hint of
    hinted sampling (format.hinted_prompt), so that the GRM learns what a hint means
    before RFT samples with one; the teacher's trajectory agrees with the hint anyway.
    """
    if not 0.0 <= hint_fraction < 1.0:
        raise ValueError(f"hint_fraction: expected a value in [0, 1), got {hint_fraction}")
    rng = np.random.default_rng([seed, 31])
    records = []
    for s in sets:
        hinted = s.best is not None and rng.random() < hint_fraction
        records.append({"prompt": hinted_prompt(s.prompt, s.best) if hinted else s.prompt,
                        "solution": teacher_trajectory(s.problem.prompt, s.responses, critique)[0],
                        "answer": ""})
    return records
