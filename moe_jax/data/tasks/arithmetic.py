"""Multi-step integer arithmetic with a least-significant-digit-first worked solution.

Prompt: operands and operators in ordinary notation, ending in "=":

    64-973-75=

Solution: a running total written in a fixed-width, reversed-digit notation,
then ">" and the answer in ordinary notation:

    +4600-3790=-9090-5700=-4890>-984

Every number in the chain is a sign followed by exactly W digits, least
significant first and zero-padded: +64 with W=4 is "+4600", -909 is "-9090".
The chain starts with the first term; each further step is "<signed term>=<new
running total>", so a running total is written once and read as the left side
of the next step. Writing digits in the order they are produced by carrying is
what makes small models learn addition: every output digit depends only on
digits already written.

W is computed from the prompt alone so the model can know it before writing:
W = (most digits in any term) + (digits of number_of_terms - 1). A sum of N
terms of m digits each is below N * 10**m <= 10**W, so every running total fits
(for the example: m=3 digits, N=3 terms, W = 3 + len("2") = 4).

Multiplication (difficulty `mul_prob` > 0) binds tighter than + and -, as usual,
and at most two factors form one term (no "a*b*c"). Each product is first
worked out as "a*b=<W reversed digits>," in prompt order, then enters the chain
like any other term; a product term counts its factors' digits summed:

    12+3*45-6=   ->   3*45=5310,+2100+5310=+7410-6000=+1410>141

Zero is written with "+". `verify` only reads what follows the last ">".

A flawed teacher (difficulty `carry_slip` > 0): at each step of the chain, with that
probability, the carry (or borrow) out of the units digit is forgotten, and the chain
goes on from the wrong total as if it were right. The example's `answer` stays the true
value, so the verifier still judges the model against the truth: a model trained on such
solutions imitates the slip, and a verifier reward can teach it away
(experiments/grpo_reasoning.py, `slip` variant). `carry_slip` = 0 writes exact chains.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from moe_jax.data.tasks.base import Example, Task, field

_INTEGER = re.compile(r"[+-]?\d{1,100}")


def _random_operand(rng: np.random.Generator, max_digits: int) -> int:
    # Pick the digit count first, so that short numbers are as common as long ones.
    digits = int(rng.integers(1, max_digits + 1))
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(low, 10**digits))


def _terms(operands: list[int], ops: list[str]) -> list[tuple[int, list[int]]]:
    """Groups operands into signed additive terms: [(+1|-1, [factor, ...]), ...]."""
    terms = [(1, [operands[0]])]
    for op, operand in zip(ops, operands[1:]):
        if op == "*":
            terms[-1][1].append(operand)
        else:
            terms.append((1 if op == "+" else -1, [operand]))
    return terms


def _reversed_fixed(value: int, width: int, signed: bool = True) -> str:
    """`value` as (sign) + `width` digits, least significant first."""
    digits = str(abs(value)).zfill(width)
    assert len(digits) == width, (value, width)
    sign = ("-" if value < 0 else "+") if signed else ""
    return sign + digits[::-1]


def _slipped_sum(total: int, term: int) -> int:
    """total + term, but with the carry or borrow out of the units digit forgotten
    (equal to the exact sum when that digit produces none)."""
    if (total >= 0) == (term >= 0) or total == 0 or term == 0:  # magnitudes add
        carry = abs(total) % 10 + abs(term) % 10 >= 10
        return total + term - (10 if total + term > 0 else -10) * carry
    big, small = (total, term) if abs(total) >= abs(term) else (term, total)
    borrow = abs(big) % 10 < abs(small) % 10  # magnitudes subtract: |big| - |small|
    return total + term + (10 if big > 0 else -10) * borrow


def worked_solution(operands: list[int], ops: list[str], slips=(), width: int | None = None
                    ) -> tuple[str, int]:
    """(solution string, integer answer) for the expression operands/ops.

    slips[i] True makes step i + 1 of the chain forget its units carry or borrow (see
    the module docstring); the solution then ends in the slipped total while the
    returned answer is still exact. width: W for every number (None: from the prompt,
    as the module docstring says); it must be at least the prompt's W.
    """
    terms = _terms(operands, ops)
    widest_term = max(sum(len(str(f)) for f in factors) for _, factors in terms)
    needed = widest_term + len(str(len(terms) - 1))
    if width is not None and width < needed:
        raise ValueError(f"width={width} is less than the {needed} digits this problem needs")
    width = width or needed

    products, magnitudes = [], []
    for _, factors in terms:
        magnitude = int(np.prod(factors, dtype=object))
        if len(factors) > 1:
            products.append(
                "*".join(map(str, factors)) + "=" + _reversed_fixed(magnitude, width, False) + ",")
        magnitudes.append(magnitude)

    running = written = magnitudes[0]  # The first term is never negated.
    chain = [_reversed_fixed(running, width)]
    for step, ((sign, _), magnitude) in enumerate(zip(terms[1:], magnitudes[1:])):
        running += sign * magnitude
        exact = written + sign * magnitude
        slipped = _slipped_sum(written, sign * magnitude) if step < len(slips) and slips[step] else exact
        written = slipped if abs(slipped) < 10**width else exact  # a forgotten borrow can add a digit
        # The operator, not the value, gives the sign: "5-0" writes "-0000".
        term = ("+" if sign > 0 else "-") + _reversed_fixed(magnitude, width, False)
        chain.append(term + "=" + _reversed_fixed(written, width))
    return "".join(products) + "".join(chain) + ">" + str(written), running


def widest(max_operands: int, max_digits: int, mul_prob: float) -> int:
    """The largest W any problem of this difficulty needs."""
    return max_digits * (2 if mul_prob > 0 else 1) + len(str(max_operands - 1))


def generate(rng: np.random.Generator, *, min_operands: int = 2, max_operands: int = 3,
             max_digits: int = 3, mul_prob: float = 0.0, carry_slip: float = 0.0,
             fixed_width: bool = False) -> Example:
    """A random expression of min..max_operands operands of 1..max_digits digits.

    Each operator is "*" with probability `mul_prob` (never twice in a row, so
    products have two factors), otherwise "+" or "-" with equal chance. `carry_slip` is
    the flawed teacher's probability of forgetting a units carry or borrow per step.
    `fixed_width` writes every solution with the difficulty's widest W (`widest`), so a
    digit and the digits it is computed from are always the same distance apart.
    """
    if not 2 <= min_operands <= max_operands:
        raise ValueError(f"need 2 <= min_operands <= max_operands, got {min_operands}, {max_operands}")
    if not 0.0 <= carry_slip <= 1.0:
        raise ValueError(f"carry_slip must be a probability in [0, 1], got {carry_slip}")
    num_operands = int(rng.integers(min_operands, max_operands + 1))
    operands = [_random_operand(rng, max_digits) for _ in range(num_operands)]
    ops = []
    for _ in range(num_operands - 1):
        if (not ops or ops[-1] != "*") and rng.random() < mul_prob:
            ops.append("*")
        else:
            ops.append("+" if rng.random() < 0.5 else "-")
    prompt = str(operands[0]) + "".join(op + str(x) for op, x in zip(ops, operands[1:])) + "="
    # Drawn only for a flawed teacher, so exact datasets keep their random stream.
    slips = tuple(rng.random() < carry_slip for _ in ops) if carry_slip else ()
    width = widest(max_operands, max_digits, mul_prob) if fixed_width else None
    solution, answer = worked_solution(operands, ops, slips, width)
    return Example(prompt=prompt, solution=solution, answer=str(answer))


def extract_answer(response: str) -> int | None:
    """The integer after the last ">" (or the whole response); None if malformed."""
    text = response.rsplit(">", 1)[-1].strip()
    if not _INTEGER.fullmatch(text):
        return None
    return int(text)


def verify(example_or_answer: Any, response: str) -> bool:
    """True iff `response`'s final answer equals the reference answer.

    `example_or_answer` is an Example, a record with an "answer" field, or the
    answer string itself. Malformed responses give False; nothing raises.
    """
    if isinstance(example_or_answer, str | int):
        reference = int(example_or_answer)
    else:
        reference = int(field(example_or_answer, "answer"))
    try:
        predicted = extract_answer(response)
    except (TypeError, AttributeError):  # e.g. a None or bytes response
        return False
    return predicted is not None and predicted == reference


def canonical_key(example: Example) -> str:
    """The prompt: two problems are the same iff they read the same."""
    return example.prompt


TASK = Task(
    name="arithmetic",
    example_cls=Example,
    generate=generate,
    verify=verify,
    canonical_key=canonical_key,
    default_difficulty=dict(min_operands=2, max_operands=3, max_digits=3, mul_prob=0.0,
                            carry_slip=0.0, fixed_width=False),
)
