"""A rule-based teacher that writes cold-start GRM targets for the arithmetic task.

It grades a worked solution the way a careful human would, one running-total step at a
time (the solution format is in moe_jax/data/tasks/arithmetic.py):

    query 12+34-5=     terms +12, +34, -5; width W = 2 + len("2") = 3
    +210+430=+640-500=+140>41
    step 1: term +430 matches +34, total +640 = +210 + +430       ok
    step 2: term -500 matches -5,  total +140 = +640 - 500        ok
    answer 41 = the last total                                     ok

and reports the first thing that is wrong, in the chain's own notation so that the
critique can be checked against the response character by character (the `verdict`
critique):

    "R2 step 2 total +150 wrong, expected +140."   a wrong carry in a running total
    "R2 has 1 steps, expected 2."                   a skipped (or added) step
    "R2 answer 51 wrong, expected 41."              a final answer that is not the total
    "R2 step 1 term +530 wrong, expected +430."     a term copied wrong from the query
    "R2 unreadable."                                not a chain at all

The `worked` critique (show_work=True) redoes each step in the solver's own notation
(previous total, term, "=", the total it should be) and the answer conversion, before
each verdict, so that a small GRM computes the sum digit by digit exactly as a solver
writes it (and a GRM started from a solver reuses its skill) instead of judging in one
token:

    "R1 step 1 +210+430=+640 ok, step 2 +640-500=+140 ok, answer +140>41 ok."
    "R2 step 1 +210+430=+640 ok, step 2 +640-500=+140 but +150 wrong."
    "R2 step 1 +210+430=+640 ok, step 2 +640-500=+140 ok, answer +140>41 but 51 wrong."

Each finding maps to a score; the local checks are complete (right terms, every total
adds up, answer = last total implies the answer is right), so "ok" means correct.
The principles are derived from the query: how many terms and digits to expect.
Only + and - problems (the default arithmetic difficulty, mul_prob = 0) are handled.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from moe_jax.grm.format import trajectory

SCORE_RIGHT = 9
SCORE_WRONG_ANSWER = 3
SCORE_WRONG_STEP = 2
SCORE_UNREADABLE = 1

_QUERY = re.compile(r"(\d+)((?:[+-]\d+)*)=")
_QUERY_TERM = re.compile(r"([+-])(\d+)")


@dataclasses.dataclass(frozen=True)
class Finding:
    """The teacher's verdict on one response: its critique sentence and score."""

    critique: str
    score: int

    @property
    def ok(self) -> bool:
        return self.score == SCORE_RIGHT


def query_terms(query: str) -> list[int]:
    """"12+34-5=" -> [12, 34, -5]; a clear error for anything else."""
    match = _QUERY.fullmatch(query)
    if match is None:
        raise ValueError(f"query: expected a +/- arithmetic prompt such as '12+34-5=', got {query!r}")
    terms = [int(match.group(1))]
    terms += [int(sign + digits) for sign, digits in _QUERY_TERM.findall(match.group(2))]
    return terms


def chain_width(terms: Sequence[int]) -> int:
    """W of the worked-solution format: widest term's digits + digits of (terms - 1)."""
    return max(len(str(abs(t))) for t in terms) + len(str(len(terms) - 1))


def write_number(value: int, width: int) -> str:
    """Sign + digits least significant first, zero-padded to `width` (longer if needed)."""
    return ("-" if value < 0 else "+") + str(abs(value)).zfill(width)[::-1]


def read_number(text: str) -> int:
    """Inverse of write_number: "-0984" -> -4890."""
    return int(text[0] + text[1:][::-1])


def principles(query: str) -> str:
    terms = query_terms(query)
    return f"{len(terms)} terms, width {chain_width(terms)}."


CRITIQUES = ("verdict", "worked", "solve")


def solution(query: str) -> str:
    """The worked solution a correct solver writes for `query`: "12+34-5=" ->
    "+210+430=+640-500=+140>41"."""
    terms = query_terms(query)
    width = chain_width(terms)
    total = terms[0]
    chain = write_number(total, width)
    # The signs are the query's own: "-0" is written "-000", which an int would lose.
    signs = [sign for sign, _ in _QUERY_TERM.findall(query[len(str(terms[0])):])]
    for sign, term in zip(signs, terms[1:]):
        total += term
        chain += f"{sign}{write_number(abs(term), width)[1:]}={write_number(total, width)}"
    return f"{chain}>{total}"


def grade(query: str, response: str, label: str, show_work: bool = False) -> Finding:
    """The first error in `response` (a worked solution of `query`), or "ok".

    label: how the critique names the response ("R1", "R2", ...). show_work: the
    `worked` critique, which writes each expected total before its verdict.
    """
    terms = query_terms(query)
    width = chain_width(terms)
    number = rf"[+-]\d{{{width}}}"
    chain, sep, answer = response.rpartition(">")
    match = re.fullmatch(rf"({number})((?:{number}={number})*)", chain) if sep else None
    if match is None:
        return Finding(f"{label} unreadable.", SCORE_UNREADABLE)
    first = read_number(match.group(1))
    steps = re.findall(rf"({number})=({number})", match.group(2))
    if first != terms[0]:
        return Finding(f"{label} first term {match.group(1)} wrong, expected "
                       f"{write_number(terms[0], width)}.", SCORE_WRONG_STEP)
    if len(steps) != len(terms) - 1:
        return Finding(f"{label} has {len(steps)} steps, expected {len(terms) - 1}.",
                       SCORE_WRONG_STEP)
    checked = []  # the worked critique's verdicts so far: "step 1 +640 ok"

    def worked(verdict: str) -> str:
        return f"{label} " + ", ".join(checked + [verdict]) + "."

    total = first
    for s, ((term_text, total_text), term) in enumerate(zip(steps, terms[1:]), start=1):
        if read_number(term_text) != term:
            return Finding(f"{label} step {s} term {term_text} wrong, expected "
                           f"{write_number(term, width)}.", SCORE_WRONG_STEP)
        expected = write_number(total + term, width)
        redone = f"step {s} {write_number(total, width)}{term_text}={expected}"
        if read_number(total_text) != total + term:
            return Finding(worked(f"{redone} but {total_text} wrong") if show_work else
                           f"{label} step {s} total {total_text} wrong, expected {expected}.",
                           SCORE_WRONG_STEP)
        checked.append(f"{redone} ok")
        total = read_number(total_text)
    redone = f"answer {write_number(total, width)}>{total}"
    if not re.fullmatch(r"-?\d+", answer) or int(answer) != total:
        return Finding(worked(f"{redone} but {answer[:8]} wrong") if show_work else
                       f"{label} answer {answer[:8]} wrong, expected {total}.", SCORE_WRONG_ANSWER)
    return Finding(worked(f"{redone} ok") if show_work else f"{label} ok.", SCORE_RIGHT)


def aligned(value: int, width: int = 3) -> str:
    """Sign and digits, most significant first, zero-padded: aligned(52) -> "+052"."""
    return ("-" if value < 0 else "+") + str(abs(value)).zfill(width)


def check_answer(query: str, response: str, label: str) -> Finding:
    """The `solve` critique's verdict on one response: its final answer (what the verifier
    checks) and the GRM's own, written aligned, then their characters in pairs, each pair
    followed by a running mark, "=" while every pair so far matched and "x" from the
    first mismatch on; the verdict repeats the last mark:

        "R1 +052 +053 ++= 00= 55= 23x wrong."

    Every token is then a local step: a pair copies two characters at a fixed offset,
    a mark reads the pair just written and the mark before it, the verdict reads the last
    mark. A tiny GRM fine-tuned on a bare list of pairs wrote the pairs right but could not
    learn to read "is any pair unequal" from all of them at once.
    """
    total = sum(query_terms(query))
    answer = response.rpartition(">")[2] if ">" in response else ""
    if not re.fullmatch(r"-?\d+", answer):
        return Finding(f"{label} no answer, wrong.", SCORE_UNREADABLE)
    width = max(3, len(str(abs(int(answer)))), len(str(abs(total))))
    theirs, ours = aligned(int(answer), width), aligned(total, width)
    marks, same = [], True
    for a, b in zip(theirs, ours):
        same = same and a == b
        marks.append(f"{a}{b}{'=' if same else 'x'}")
    right = int(answer) == total
    return Finding(f"{label} {theirs} {ours} {' '.join(marks)} {'ok' if right else 'wrong'}.",
                   SCORE_RIGHT if right else SCORE_WRONG_ANSWER)


_SOLVED = re.compile(r"Solve \S+ \S*>(-?\d+)\.")
_COPIED = re.compile(r"\b(R\d+) (?:([+-]\d+) [+-]\d+ |no answer)")


def read_solve_critique(text: str) -> tuple[int | None, dict[str, int | None]]:
    """What a `solve` critique (the GRM's or the teacher's) claims: its own final answer
    (None when it wrote none) and each response's answer as it copied it (None for "no
    answer"): "Solve 5+8= +50+80=+31>13. R1 +013 +013 ... R2 +012 +013 ..." ->
    (13, {"R1": 13, "R2": 12}). The first copy of a label counts."""
    solved = _SOLVED.search(text)
    copies = {}
    for label, answer in _COPIED.findall(text):
        copies.setdefault(label, int(answer) if answer else None)
    return (int(solved.group(1)) if solved else None), copies


def teacher_trajectory(query: str, responses: Sequence[str],
                       critique: str = "verdict") -> tuple[str, list[Finding]]:
    """The cold-start target for a GRM input: principles, one critique per response, scores.

    critique: "verdict" (the first error only), "worked" (every expected total first) or
    "solve" (the GRM's own solution of the query first, written as a solver writes it
    right after the query it copies; then each response's final answer compared with
    its own character by character, `check_answer`: "Solve 12+34-5= +210+430=+640-500=+140>41.
    R1 +041 +041 ++= 00= 44= 11= ok. R2 +051 +041 ++= 00= 54x 11x wrong.").
    """
    if critique not in CRITIQUES:
        raise ValueError(f"critique {critique!r}: expected one of {CRITIQUES}")
    if critique == "solve":
        findings = [check_answer(query, r, f"R{i + 1}") for i, r in enumerate(responses)]
        verdicts = f"Solve {query} {solution(query)}. " + " ".join(f.critique for f in findings)
    else:
        findings = [grade(query, r, f"R{i + 1}", show_work=critique == "worked")
                    for i, r in enumerate(responses)]
        verdicts = " ".join(f.critique for f in findings)
    text = trajectory(principles(query), verdicts, [f.score for f in findings])
    return text, findings
