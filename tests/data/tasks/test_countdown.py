"""Tests for moe_jax.data.tasks.countdown."""

from fractions import Fraction

import numpy as np
import pytest

from moe_jax.data.tasks import countdown


def _examples(n=300, seed=0, **difficulty):
    rng = np.random.default_rng(seed)
    return [countdown.generate(rng, **difficulty) for _ in range(n)]


@pytest.mark.parametrize("difficulty", [{}, dict(min_numbers=2, max_numbers=6, max_number=20)])
def test_reference_solutions_are_verified(difficulty):
    for example in _examples(**difficulty):
        numbers_text, target_text = example.prompt[:-1].split(":")
        assert tuple(map(int, numbers_text.split(","))) == example.numbers
        assert int(target_text) == example.target
        assert example.target not in example.numbers
        assert example.solution.endswith(">" + example.answer)
        assert countdown.verify(example, example.solution)
        assert countdown.verify(example, example.answer)
        record = {"numbers": np.array(example.numbers), "target": np.int64(example.target)}
        assert countdown.verify(record, example.solution)


def test_steps_are_exact_and_use_all_numbers():
    for example in _examples(max_number=50):
        steps = example.solution.split(">")[0].split(",")
        assert len(steps) == len(example.numbers) - 1
        for step in steps:
            left, result = step.split("=")
            value, _ = countdown.evaluate(left)
            assert value == int(result) and value.denominator == 1 and value > 0
        assert example.answer.count(",") == 0
        assert sorted(countdown.evaluate(example.answer)[1]) == sorted(example.numbers)


def test_minimal_parentheses():
    assert countdown._to_text(("-", 98, ("-", 95, 38))) == "98-(95-38)"
    assert countdown._to_text(("*", 31, ("-", 49, 42))) == "31*(49-42)"
    assert countdown._to_text(("-", ("+", 1, 2), ("*", 3, 4))) == "1+2-3*4"
    assert countdown._to_text(("/", 64, ("*", 2, 4))) == "64/(2*4)"
    assert countdown._to_text(("+", 5, ("-", 4, 3))) == "5+4-3"


def test_evaluate_is_exact():
    assert countdown.evaluate("7/2*2") == (Fraction(7), [7, 2, 2])
    assert countdown.evaluate(" ( 1 + 2 ) * 3 ") == (Fraction(9), [1, 2, 3])


def test_verify_semantics():
    example = countdown.CountdownExample(
        prompt="25,4,3,7:104=", solution="", answer="25*4-3+7",
        numbers=(25, 4, 3, 7), target=104)
    assert countdown.verify(example, "4*25+7-3")  # Any order and grouping.
    assert countdown.verify(example, "steps...>(7-3)+25*4")  # Only after the last ">".
    assert not countdown.verify(example, "(25-3)*4+7")  # 22*4+7 = 95.
    # Fractions in between are exact: 7/2*4 = 14.
    assert countdown.verify(countdown.CountdownExample("", "", "", (7, 2, 4), 14), "7/2*4")
    # So are negatives: (3-7)*25 = -100.
    assert countdown.verify(countdown.CountdownExample("", "", "", (3, 7, 25), -100), "(3-7)*25")
    # Subsets are allowed, repeats are not.
    assert countdown.verify(countdown.CountdownExample("", "", "", (25, 4, 3, 1), 100), "25*4")
    assert not countdown.verify(example, "25*4+4")
    assert not countdown.verify(example, "25*4+7-3+1-1")


@pytest.mark.parametrize("response", [
    "", ">", "25*4-3+7=104", "25*4-3+", "(25*4-3+7", "25*4-3+7)", "25**4", "-25*4",
    "25*4-3+7 x", "25×4", "1/0", "3/(7-7)", "(" * 5000 + "7" + ")" * 5000,
    "9" * 30, "25 4", "25*4-3+07",
])
def test_malformed_or_wrong_responses_are_false_never_raise(response):
    example = countdown.CountdownExample("", "", "", (25, 4, 3, 7, 0), 104)
    assert not countdown.verify(example, response)


def test_perturbed_reference_answers_are_rejected():
    for example in _examples(100):
        for wrong_target in (example.target + 1, example.target - 1):
            assert not countdown.verify({**vars(example), "target": wrong_target}, example.answer)
        # Using a number that is not given (the first one, plus 100).
        first = str(example.numbers[0])
        swapped = example.answer.replace(first, str(int(first) + 100), 1)
        assert not countdown.verify(example, swapped)
        # Dropping the last number from the multiset makes the reference illegal.
        fewer = {"numbers": example.numbers[:-1], "target": example.target}
        assert not countdown.verify(fewer, example.answer)


def test_same_seed_same_problems():
    assert _examples(50, seed=1) == _examples(50, seed=1)
    assert _examples(50, seed=1) != _examples(50, seed=2)
