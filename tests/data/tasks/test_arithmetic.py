"""Tests for moe_jax.data.tasks.arithmetic."""

import numpy as np
import pytest

from moe_jax.data.tasks import arithmetic


def _examples(n=300, seed=0, **difficulty):
    rng = np.random.default_rng(seed)
    return [arithmetic.generate(rng, **difficulty) for _ in range(n)]


def test_worked_solution_of_the_documented_examples():
    # 64-973 = -909, -909-75 = -984; width = 3 digits + len(str(3 terms - 1)) = 4,
    # so 64 -> "+" + "0064" reversed = "+4600".
    assert arithmetic.worked_solution([64, 973, 75], ["-", "-"]) == (
        "+4600-3790=-9090-5700=-4890>-984", -984)
    # 3*45 = 135 is one term of 1+2 = 3 digits; 12+135 = 147, 147-6 = 141.
    assert arithmetic.worked_solution([12, 3, 45, 6], ["+", "*", "-"]) == (
        "3*45=5310,+2100+5310=+7410-6000=+1410>141", 141)
    # The operator gives the sign, also for zero; zero totals are "+".
    assert arithmetic.worked_solution([5, 0], ["-"]) == ("+50-00=+50>5", 5)
    assert arithmetic.worked_solution([7, 7], ["-"]) == ("+70-70=+00>0", 0)


def test_fixed_width_writes_every_number_with_the_widest_w():
    # The documented example at W = 5 instead of its own 4.
    assert arithmetic.worked_solution([64, 973, 75], ["-", "-"], width=5) == (
        "+46000-37900=-90900-57000=-48900>-984", -984)
    with pytest.raises(ValueError, match="width=3 is less than the 4 digits"):
        arithmetic.worked_solution([64, 973, 75], ["-", "-"], width=3)
    for difficulty, w in [(dict(max_operands=3, max_digits=3), 4),
                          (dict(max_operands=12, max_digits=2), 4),
                          (dict(max_operands=5, max_digits=3, mul_prob=0.5), 7)]:
        assert arithmetic.widest(difficulty["max_operands"], difficulty["max_digits"],
                                 difficulty.get("mul_prob", 0.0)) == w
        fixed = _examples(200, fixed_width=True, **difficulty)
        plain = _examples(200, **difficulty)
        # The same problems (no extra random draws), every number W digits wide.
        assert [e.prompt for e in fixed] == [e.prompt for e in plain]
        for example in fixed:
            chain = example.solution.rsplit(">", 1)[0].replace(",", "=").split("=")
            numbers = [n for part in chain for n in part.replace("-", " -").replace(
                "+", " +").split() if "*" not in n]
            assert {len(n.lstrip("+-")) for n in numbers} == {w}, example
            assert arithmetic.verify(example, example.solution)


@pytest.mark.parametrize("difficulty", [
    {},
    dict(min_operands=2, max_operands=12, max_digits=4),
    dict(max_operands=5, max_digits=3, mul_prob=0.5),
    dict(max_operands=5, max_digits=3, mul_prob=0.5, fixed_width=True),
])
def test_reference_solutions_are_correct_and_verified(difficulty):
    for example in _examples(**difficulty):
        assert example.prompt.endswith("=")
        # The answer is the value of the prompt under ordinary precedence; the
        # prompt only holds digits and + - *, so Python's eval is a safe oracle here.
        assert set(example.prompt[:-1]) <= set("0123456789+-*")
        assert int(example.answer) == eval(example.prompt[:-1])  # noqa: S307
        assert "**" not in example.prompt
        assert example.solution.endswith(">" + example.answer)
        assert arithmetic.verify(example, example.solution)
        assert arithmetic.verify(example, example.answer)
        assert arithmetic.verify(example.answer, example.solution)
        assert arithmetic.verify({"answer": example.answer.encode()}, example.solution)


def test_chain_numbers_have_fixed_width():
    for example in _examples(max_operands=6, max_digits=4, mul_prob=0.3):
        chain = example.solution.split(",")[-1].split(">")[0]
        numbers = chain.replace("=", "").replace("+", " ").replace("-", " ").split()
        assert len({len(n) for n in numbers}) == 1, example


@pytest.mark.parametrize("difficulty", [{}, dict(max_operands=5, mul_prob=0.5)])
def test_rejects_perturbed_answers(difficulty):
    for example in _examples(**difficulty):
        prefix, answer = example.solution.rsplit(">", 1)
        value = int(answer)
        for wrong in (value + 1, value - 1, -value if value else 1, value * 10 + 1):
            assert not arithmetic.verify(example, f"{prefix}>{wrong}")
            assert not arithmetic.verify(example, str(wrong))


@pytest.mark.parametrize("response", [
    "", ">", "12>", "+4600-3790=-9090-5700=-4890>", ">-98 4", ">--984", ">-984.0",
    ">9" * 10 + "x", ">" + "9" * 5000, ">one", "-984>", ">-984=", ">0x10",
])
def test_malformed_responses_are_false_never_raise(response):
    assert not arithmetic.verify("-984", response)


def test_answer_parsing_is_lenient_only_about_whitespace_and_plus():
    assert arithmetic.verify("-984", "...>  -984 \n")
    assert arithmetic.verify("984", "+984")
    assert arithmetic.verify("0", "...>-0")
    assert not arithmetic.verify("-984", None)


def test_same_seed_same_problems():
    assert _examples(50, seed=3) == _examples(50, seed=3)
    assert _examples(50, seed=3) != _examples(50, seed=4)


def test_difficulty_is_respected():
    for example in _examples(min_operands=4, max_operands=4, max_digits=2):
        operands = example.prompt[:-1].replace("-", "+").split("+")
        assert len(operands) == 4
        assert all(len(x) <= 2 for x in operands)
    with pytest.raises(ValueError):
        arithmetic.generate(np.random.default_rng(0), min_operands=1)


def test_a_flawed_teacher_forgets_the_units_carry_or_borrow():
    # 18+25: 8+5 carries; forgotten, the tens give 1+2 = 3 -> 33 (true 43).
    assert arithmetic.worked_solution([18, 25], ["+"], slips=(True,)) == ("+810+520=+330>33", 43)
    # 445-99: 5-9 borrows; forgotten, 445-99 reads 356 (true 346).
    assert arithmetic.worked_solution([445, 99], ["-"], slips=(True,)) == (
        "+5440-9900=+6530>356", 346)
    # 17-23 = -(23-17): 3-7 borrows; forgotten, -16 (true -6).
    assert arithmetic.worked_solution([17, 23], ["-"], slips=(True,)) == ("+710-320=-610>-16", -6)
    # No carry or borrow in the units: a slip changes nothing.
    assert arithmetic.worked_solution([12, 34], ["+"], slips=(True,)) == (
        arithmetic.worked_solution([12, 34], ["+"]))
    # The chain goes on from the slipped total: 18+25 -> 33, then 33+9 = 42 (8+9 carries, but
    # only the first step slips).
    assert arithmetic.worked_solution([18, 25, 9], ["+", "+"], slips=(True, False)) == (
        "+810+520=+330+900=+240>42", 52)


def _column_sum_without_units_carry(a: int, b: int) -> int:
    """a + b for a, b >= 0 by column addition whose units carry is dropped."""
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    out, carry = [], 0
    for i in range(max(len(digits_a), len(digits_b)) + 1):
        column = int(digits_a[i] if i < len(digits_a) else 0) + int(
            digits_b[i] if i < len(digits_b) else 0) + carry
        out.append(column % 10)
        carry = column // 10 if i > 0 else 0
    return int("".join(map(str, out))[::-1])


def test_slipped_additions_match_column_addition():
    for example in _examples(400, seed=5, max_operands=2, carry_slip=1.0):
        a, op, b = example.prompt[:-1].partition("+")
        if not op:
            continue
        written = int(example.solution.rsplit(">", 1)[1])
        assert written == _column_sum_without_units_carry(int(a), int(b)), example
        assert int(example.answer) == int(a) + int(b)


def test_carry_slip_keeps_true_answers_and_exact_data_unchanged():
    flawed = _examples(400, seed=1, carry_slip=0.7)
    exact = _examples(400, seed=1)
    assert all(int(e.answer) == eval(e.prompt[:-1]) for e in flawed)  # noqa: S307
    wrong = sum(not arithmetic.verify(e, e.solution) for e in flawed)
    assert 0.15 < wrong / len(flawed) < 0.6  # ~45% of steps carry or borrow, 70% of those slip
    assert all(arithmetic.verify(e, e.solution) for e in exact)
    assert exact == _examples(400, seed=1, carry_slip=0.0)
    with pytest.raises(ValueError, match="carry_slip"):
        arithmetic.generate(np.random.default_rng(0), carry_slip=1.5)
