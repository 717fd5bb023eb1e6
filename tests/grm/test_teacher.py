"""The rule-based teacher on hand-made solutions of 12+34-5= (W = 2 + len("2") = 3:
12 -> +210, 12+34 = 46 -> +640, 46-5 = 41 -> +140)."""

import numpy as np
import pytest

from moe_jax.data.tasks import generate_split, get_task
from moe_jax.data.tasks.arithmetic import worked_solution
from moe_jax.grm.preferences import (CORRUPTIONS, cold_start_records, corrupt, preference_set,
                                     sampled_sets)
from moe_jax.grm.format import shown_response
from moe_jax.grm.scores import parse_strict
from moe_jax.grm.teacher import (SCORE_RIGHT, SCORE_UNREADABLE, SCORE_WRONG_ANSWER,
                                 SCORE_WRONG_STEP, grade, principles, query_terms,
                                 check_answer, read_number, solution, teacher_trajectory, write_number)
from moe_jax.grm.voting import predicted_best

QUERY = "12+34-5="
RIGHT = "+210+430=+640-500=+140>41"


def test_reference_solution_is_the_task_own():
    assert worked_solution([12, 34, 5], ["+", "-"]) == (RIGHT, 41)
    assert query_terms(QUERY) == [12, 34, -5]
    assert write_number(-4890, 4) == "-0984" and read_number("-0984") == -4890
    assert principles(QUERY) == "3 terms, width 3."


@pytest.mark.parametrize("response, critique, score", [
    (RIGHT, "R1 ok.", SCORE_RIGHT),
    # A dropped carry: 12+34 written as 56; the next total follows from it (56-5 = 51).
    ("+210+430=+650-500=+150>51", "R1 step 1 total +650 wrong, expected +640.", SCORE_WRONG_STEP),
    # Later totals are checked against the written previous total, not the true one.
    ("+210+430=+640-500=+150>51", "R1 step 2 total +150 wrong, expected +140.", SCORE_WRONG_STEP),
    ("+210+430=+640-500=+140>42", "R1 answer 42 wrong, expected 41.", SCORE_WRONG_ANSWER),
    ("+210+430=+640>46", "R1 has 1 steps, expected 2.", SCORE_WRONG_STEP),
    ("+210+530=+740-500=+240>42", "R1 step 1 term +530 wrong, expected +430.", SCORE_WRONG_STEP),
    ("+310+430=+740-500=+240>42", "R1 first term +310 wrong, expected +210.", SCORE_WRONG_STEP),
    ("hello", "R1 unreadable.", SCORE_UNREADABLE),
    ("+21+43=+64>46", "R1 unreadable.", SCORE_UNREADABLE),  # wrong width
])
def test_grade_reports_the_first_error(response, critique, score):
    finding = grade(QUERY, response, "R1")
    assert (finding.critique, finding.score) == (critique, score)
    # "ok" exactly when the verifier agrees the answer is right.
    assert finding.ok == get_task("arithmetic").verify("41", response)


def test_teacher_trajectory_scores_each_response():
    text, findings = teacher_trajectory(QUERY, ["+210+430=+640-500=+140>42", RIGHT])
    assert text == ("Principles: 3 terms, width 3.\n"
                    "Critique: R1 answer 42 wrong, expected 41. R2 ok.\n"
                    "Final Scores: [[3, 9]]")
    assert [f.ok for f in findings] == [False, True]


def test_bad_query_names_the_field():
    with pytest.raises(ValueError, match="query"):
        grade("12*3=", RIGHT, "R1")


def test_corruptions_are_wrong_and_critiqued_as_their_kind():
    problem = preference_set("train", 1, seed=3, difficulty=dict(min_operands=3))[0].problem
    rng = np.random.default_rng(0)
    expected = {"carry": "total", "answer": "answer", "skip": "steps"}
    for kind in CORRUPTIONS:
        for _ in range(5):
            response = corrupt(problem, kind, rng)
            finding = grade(problem.prompt, response, "R1")
            if get_task("arithmetic").verify(problem, response):
                continue  # e.g. skipping a zero term; preference_set discards these
            assert expected[kind] in finding.critique, (kind, response, finding)


def test_preference_sets_label_the_one_right_response_and_keep_splits_apart():
    train = preference_set("train", 50, seed=0, no_best_fraction=0.2)
    test = preference_set("test", 20, seed=0)
    assert not {s.problem.prompt for s in train} & {s.problem.prompt for s in test}
    assert all(s.best is not None for s in test)
    assert 0 < sum(s.best is None for s in train) < 50
    for s in train:
        if s.best is not None:
            assert s.correct[s.best] and sum(s.correct) == 1
    for s, record in zip(train, cold_start_records(train)):
        assert record["prompt"].startswith(f"Q:{s.problem.prompt}\nR1:")
        parsed = parse_strict(record["solution"], 2)
        assert parsed.ok
        if s.best is not None or all(s.correct):  # all wrong: scores rank the kinds of error
            assert predicted_best(parsed.scores) == s.best


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_all_wrong_share_decides_what_the_sets_without_a_best_hold(share):
    sets = preference_set("train", 40, seed=1, no_best_fraction=0.5, all_wrong_share=share)
    no_best = [s for s in sets if s.best is None]
    assert 5 < len(no_best) < 35
    assert all(not any(s.correct) if share else all(s.correct) for s in no_best)
    with pytest.raises(ValueError, match="all_wrong_share"):
        preference_set("train", 2, no_best_fraction=0.5, all_wrong_share=-0.1)


def test_the_answer_view_shows_what_the_verifier_reads_and_the_solve_critique_is_unchanged():
    assert shown_response(RIGHT, "answer") == ">41"
    assert shown_response("+210+430=+640", "answer") == ""  # no final answer
    assert shown_response(RIGHT, "full") == RIGHT
    with pytest.raises(ValueError, match="view"):
        shown_response(RIGHT, "digits")
    verifier = get_task("arithmetic")
    for s in preference_set("train", 30, seed=3, no_best_fraction=0.3):
        shown = [shown_response(r, "answer") for r in s.responses]
        assert [verifier.verify(s.problem, r) for r in shown] == list(s.correct)
        full, _ = teacher_trajectory(s.problem.prompt, s.responses, "solve")
        assert teacher_trajectory(s.problem.prompt, shown, "solve")[0] == full


def test_sets_from_policy_samples_pair_a_right_sample_with_a_wrong_one():
    problem = get_task("arithmetic").from_record(
        {"prompt": "12+34-5=", "solution": RIGHT, "answer": "41"})
    off_by_ten = RIGHT.replace("+140>41", "+150>51")
    samples = [[off_by_ten, RIGHT, off_by_ten, None],  # right + two distinct wrong
               [off_by_ten, off_by_ten, None, None],   # all wrong
               [RIGHT, RIGHT, RIGHT, RIGHT]]           # nothing to prefer
    for seed in range(10):
        sets = sampled_sets([problem] * 3, samples, np.random.default_rng(seed),
                            no_best_fraction=0.0)
        assert len(sets) == 1 and sets[0].best is not None
        assert sets[0].responses[sets[0].best] == RIGHT
        assert sets[0].responses[1 - sets[0].best] in (off_by_ten, "")
    everything = sampled_sets([problem] * 3, samples, np.random.default_rng(0),
                              no_best_fraction=0.999)
    assert [s.best is None for s in everything] == [False, True]
    assert set(everything[1].responses) == {off_by_ten, ""}  # distinct wrong samples


@pytest.mark.parametrize("response, critique", [
    (RIGHT, "R1 step 1 +210+430=+640 ok, step 2 +640-500=+140 ok, answer +140>41 ok."),
    ("+210+430=+650-500=+150>51", "R1 step 1 +210+430=+640 but +650 wrong."),
    ("+210+430=+640-500=+150>51",
     "R1 step 1 +210+430=+640 ok, step 2 +640-500=+140 but +150 wrong."),
    ("+210+430=+640-500=+140>42",
     "R1 step 1 +210+430=+640 ok, step 2 +640-500=+140 ok, answer +140>41 but 42 wrong."),
    ("+210+430=+640>46", "R1 has 1 steps, expected 2."),
    ("hello", "R1 unreadable."),
])
def test_worked_critique_writes_each_expected_total_before_its_verdict(response, critique):
    worked, verdict = grade(QUERY, response, "R1", show_work=True), grade(QUERY, response, "R1")
    assert worked.critique == critique
    assert worked.score == verdict.score  # the same judgement, only written out


def test_the_teachers_own_solution_is_the_tasks_on_random_problems():
    for problem in generate_split(get_task("arithmetic"), "test", 200, seed=3, min_operands=2,
                                  max_operands=4, max_digits=3):
        assert solution(problem.prompt) == problem.solution, problem.prompt


def test_solve_critique_solves_first_then_compares_each_answer_with_its_own():
    wrong, skipped = "+210+430=+650-500=+150>51", "+210+430=+640>46"
    text, findings = teacher_trajectory(QUERY, [wrong, RIGHT, skipped, "+210+4", "+0>-1041"],
                                        critique="solve")
    assert text.splitlines()[1] == (
        f"Critique: Solve {QUERY} {RIGHT}. R1 +051 +041 ++= 00= 54x 11x wrong. "
        "R2 +041 +041 ++= 00= 44= 11= ok. R3 +046 +041 ++= 00= 44= 61x wrong. "
        "R4 no answer, wrong. R5 -1041 +0041 -+x 10x 00x 44x 11x wrong.")
    assert [f.score for f in findings] == [SCORE_WRONG_ANSWER, SCORE_RIGHT, SCORE_WRONG_ANSWER,
                                           SCORE_UNREADABLE, SCORE_WRONG_ANSWER]
    # Only the final answer counts, as for the verifier: a slipped chain that lands on
    # the right value is "ok".
    assert check_answer(QUERY, "+210+430=+650-500=+150>41", "R1").ok


def test_unknown_critique_style_names_the_choices():
    with pytest.raises(ValueError, match="verdict"):
        teacher_trajectory(QUERY, [RIGHT], critique="short")
