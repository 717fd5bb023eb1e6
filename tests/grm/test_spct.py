"""Rejective fine-tuning's records by hand: accepted trajectories only, too-easy inputs
dropped, hinted inputs fine-tuned without their hint."""

import pytest

from moe_jax.data.tasks import get_task
from moe_jax.grm.format import grm_prompt, hinted_prompt, trajectory
from moe_jax.grm.preferences import cold_start_records, labelled, preference_set
from moe_jax.grm.spct import rft_records


def test_hinted_prompt_names_the_best_response_after_the_input():
    prompt = grm_prompt("1+1=", [">2", ">3"])
    assert hinted_prompt(prompt, 0) == "Q:1+1=\nR1:>2\nR2:>3\nBest: R1\n"
    with pytest.raises(ValueError, match="best"):
        hinted_prompt(prompt, None)


def _set(best_first: bool):
    problem = get_task("arithmetic").from_record({"prompt": "1+1=", "solution": "+10+10=+20>2",
                                                  "answer": "2"})
    responses = ["+10+10=+20>2", "+10+10=+30>3"]
    return labelled(problem, responses if best_first else responses[::-1])


def test_rft_keeps_accepted_trajectories_and_drops_inputs_that_are_too_easy():
    first, second = _set(True), _set(False)  # best R1, best R2
    right_1, right_2 = trajectory("p", "c", [9, 3]), trajectory("p", "c", [3, 9])
    tie = trajectory("p", "c", [9, 9])
    samples = [[right_1, tie, right_2], [right_2, right_2, right_2]]
    records, stats = rft_records([first, second], samples)
    # Set 1: only its first sample singles out R1. Set 2: all three are right, too easy.
    assert records == [{"prompt": first.prompt, "solution": right_1, "answer": ""}]
    assert stats["accepted_per_input"] == [1, 3] and stats["too_easy_inputs"] == 1
    assert stats["accept_rate"] == pytest.approx(4 / 6)
    kept, _ = rft_records([second], [samples[1]], drop_too_easy=False)
    assert len(kept) == 3
    # The tolerant format "[[9,3]]" is not what the strict parser accepts.
    loose = right_1.replace("[[9, 3]]", "[[9,3]]")
    assert rft_records([first], [[loose]], drop_too_easy=False)[0] == []
    assert len(rft_records([first], [[loose]], parser="tolerant", drop_too_easy=False)[0]) == 1


def test_cold_start_shows_a_share_of_its_inputs_hinted_and_the_teacher_agrees():
    sets = preference_set("train", 200, seed=4, no_best_fraction=0.2)
    plain = cold_start_records(sets, "verdict")
    hinted = cold_start_records(sets, "verdict", hint_fraction=0.5, seed=1)
    with_hint = [r for r in hinted if "Best: R" in r["prompt"]]
    assert 70 < len(with_hint) < 130  # about half of the ~160 sets with a unique best
    for s, a, b in zip(sets, plain, hinted):
        assert a["solution"] == b["solution"] and a["prompt"] == s.prompt
        if b["prompt"] != s.prompt:
            assert s.best is not None and b["prompt"] == hinted_prompt(s.prompt, s.best)
    with pytest.raises(ValueError, match="hint_fraction"):
        cold_start_records(sets, hint_fraction=1.0)
