"""Countdown: reach a target from a few numbers with + - * /.

Prompt: the given numbers, ":", the target, "=":

    25,4,3,7:104=

Solution: the steps that combine two available numbers (given ones or earlier
results) into a new one, separated by ",", then ">" and one expression that
uses each given number at most once:

    25*4=100,100-3=97,97+7=104>25*4-3+7

Answer: the expression after ">" ("25*4-3+7"). Any expression that evaluates to
the target with a sub-multiset of the given numbers is correct, so `verify`
parses and evaluates it instead of comparing strings.

Generation plays the game forwards, which guarantees a solution: starting from
the pool of given numbers, it repeatedly takes two, applies an allowed operation
and puts the result back, until one number, the target, remains; the worked
steps and the final expression record that path. Every step keeps results
positive integers no larger than `max_target`, writes the larger operand first,
divides only exactly, and never multiplies or divides by 1 (steps that change
nothing teach nothing). The reference solution uses every given number; problems
whose target is itself one of the given numbers are redrawn.

`verify` is more permissive than generation: it evaluates with exact fractions,
so intermediate values may be negative or fractional as long as the final value
equals the target, and division by zero makes the response wrong, not an error.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from fractions import Fraction
from typing import Any

import numpy as np

from moe_jax.data.tasks.base import Example, Task, field

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
# Numbers as the prompt writes them: no leading zeros, so "07" is malformed.
_TOKEN = re.compile(r"\s*(?:(0|[1-9]\d{0,11})|([-+*/()]))")
_MAX_RESPONSE_CHARS = 1000  # Far above any correct answer; bounds parser recursion.


@dataclasses.dataclass(frozen=True)
class CountdownExample(Example):
    """An Example plus what `verify` needs: the given numbers and the target."""

    numbers: tuple[int, ...]
    target: int


# An expression tree is an int (a given number) or a tuple (op, left, right).


def _to_text(node: int | tuple, parent_op: str | None = None, is_right: bool = False) -> str:
    """Infix text of an expression tree with only the parentheses it needs."""
    if isinstance(node, int):
        return str(node)
    op, left, right = node
    text = _to_text(left, op, False) + op + _to_text(right, op, True)
    if parent_op is not None:
        looser = _PRECEDENCE[op] < _PRECEDENCE[parent_op]
        # a-(b+c), a-(b-c), a/(b*c), a/(b/c) change meaning without parentheses.
        same_level_on_right = (is_right and parent_op in "-/"
                               and _PRECEDENCE[op] == _PRECEDENCE[parent_op])
        if looser or same_level_on_right:
            text = "(" + text + ")"
    return text


def _allowed_ops(a: int, b: int, max_target: int) -> list[str]:
    """Operations for a step `a op b` with a >= b that keep the game's rules."""
    ops = []
    if a + b <= max_target:
        ops.append("+")
    if a > b:
        ops.append("-")
    if b > 1 and a * b <= max_target:
        ops.append("*")
    if b > 1 and a % b == 0:
        ops.append("/")
    return ops


def _apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def generate(rng: np.random.Generator, *, min_numbers: int = 3, max_numbers: int = 4,
             max_number: int = 99, max_target: int = 999) -> CountdownExample:
    """A solvable problem with min..max_numbers numbers drawn from 1..max_number."""
    if not 2 <= min_numbers <= max_numbers:
        raise ValueError(f"need 2 <= min_numbers <= max_numbers, got {min_numbers}, {max_numbers}")
    if max_target < 2 * max_number:
        raise ValueError(f"max_target={max_target} must be at least 2*max_number")
    count = int(rng.integers(min_numbers, max_numbers + 1))
    while True:  # Rejection sampling; almost every draw is accepted.
        numbers = [int(x) for x in rng.integers(1, max_number + 1, size=count)]
        pool: list[tuple[int, int | tuple]] = [(x, x) for x in numbers]
        steps = []
        while len(pool) > 1:
            i, j = sorted(int(k) for k in rng.choice(len(pool), size=2, replace=False))
            (a, tree_a), (b, tree_b) = sorted([pool.pop(j), pool.pop(i)], key=lambda p: -p[0])
            ops = _allowed_ops(a, b, max_target)
            if not ops:
                break
            op = ops[int(rng.integers(len(ops)))]
            value = _apply(op, a, b)
            steps.append(f"{a}{op}{b}={value}")
            pool.append((value, (op, tree_a, tree_b)))
        if len(pool) == 1 and len(steps) == count - 1 and pool[0][0] not in numbers:
            break
    target, tree = pool[0]
    answer = _to_text(tree)
    prompt = ",".join(map(str, numbers)) + f":{target}="
    solution = ",".join(steps) + ">" + answer
    return CountdownExample(prompt=prompt, solution=solution, answer=answer,
                            numbers=tuple(numbers), target=target)


class _Parser:
    """Recursive descent over  expr := term (('+'|'-') term)*,
    term := factor (('*'|'/') factor)*,  factor := INT | '(' expr ')'.

    Evaluates with Fractions and records the integer literals it reads; there is
    no unary minus, so every literal is a non-negative number written out.
    """

    def __init__(self, text: str):
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = text.rstrip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:
                raise ValueError(f"unexpected character at {position}")
            number, symbol = match.groups()
            self.tokens.append(("int", number) if number else ("op", symbol))
            position = match.end()
        self.index = 0
        self.literals: list[int] = []

    def _peek(self) -> str | None:
        return self.tokens[self.index][1] if self.index < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        if self.index >= len(self.tokens):
            raise ValueError("unexpected end of expression")
        self.index += 1
        return self.tokens[self.index - 1]

    def parse(self) -> Fraction:
        value = self._expr()
        if self.index != len(self.tokens):
            raise ValueError("trailing tokens")
        return value

    def _expr(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            op = self._take()[1]
            right = self._term()
            value = value + right if op == "+" else value - right
        return value

    def _term(self) -> Fraction:
        value = self._factor()
        while self._peek() in ("*", "/"):
            op = self._take()[1]
            right = self._factor()
            value = value * right if op == "*" else value / right  # ZeroDivisionError
        return value

    def _factor(self) -> Fraction:
        kind, text = self._take()
        if kind == "int":
            self.literals.append(int(text))
            return Fraction(int(text))
        if text != "(":
            raise ValueError(f"unexpected {text!r}")
        value = self._expr()
        if self._take()[1] != ")":
            raise ValueError("missing ')'")
        return value


def evaluate(expression: str) -> tuple[Fraction, list[int]]:
    """(exact value, integer literals used) of an expression; ValueError if malformed."""
    parser = _Parser(expression)
    return parser.parse(), parser.literals


def verify(example_or_fields: Any, response: str) -> bool:
    """True iff the expression after the last ">" (or the whole response) equals
    the target and uses each given number at most once.

    `example_or_fields` is a CountdownExample or a record with "numbers" and
    "target". Malformed responses give False; nothing raises.
    """
    numbers = Counter(field(example_or_fields, "numbers"))
    target = field(example_or_fields, "target")
    if not isinstance(response, str) or len(response) > _MAX_RESPONSE_CHARS:
        return False
    try:
        value, literals = evaluate(response.rsplit(">", 1)[-1])
    except (ValueError, ZeroDivisionError, RecursionError):
        return False
    return value == target and not Counter(literals) - numbers


def canonical_key(example: CountdownExample) -> str:
    """Sorted numbers and target: the order numbers are listed in is not a new problem."""
    return ",".join(map(str, sorted(example.numbers))) + f":{example.target}"


TASK = Task(
    name="countdown",
    example_cls=CountdownExample,
    generate=generate,
    verify=verify,
    canonical_key=canonical_key,
    default_difficulty=dict(min_numbers=3, max_numbers=4, max_number=99, max_target=999),
)
