"""Reading the scores out of a GRM trajectory, strictly or tolerantly.

Both parsers return a `ParsedScores`, never raise on model output: a sampled
trajectory that is cut off, repeats itself or writes the wrong number of scores is
*malformed*, which the rules in voting.py treat as a wrong verdict (reward -1, no
votes), not as a crash.

strict    the trajectory is exactly three lines, "Principles: ...", "Critique: ...",
          "Final Scores: [[s1, ..., sn]]" with n integers in 1..10 (the teacher's format).
tolerant  the last "[[...]]" after the last "Final Scores" (any case, with or without
          the colon), integers separated by commas and/or spaces, anything around it
          ignored. Used at inference, where a slightly off format should still vote.

Both require exactly n scores (n = the number of responses) in 1..10.
"""

from __future__ import annotations

import dataclasses
import re

from moe_jax.grm.format import CRITIQUE, FINAL_SCORES, MAX_SCORE, MIN_SCORE, PRINCIPLES

_STRICT_SCORES = re.compile(r"Final Scores: \[\[(\d+(?:, \d+)*)\]\]")
_TOLERANT_SCORES = re.compile(r"final\s*scores\s*:?\s*\[\[([^\[\]]*)\]\]", re.IGNORECASE)
_SEPARATOR = re.compile(r"[,\s]+")


@dataclasses.dataclass(frozen=True)
class ParsedScores:
    """scores: one integer per response, or None when the trajectory is malformed;
    error: why it is malformed (None when it is not)."""

    scores: tuple[int, ...] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.scores is not None


def _malformed(why: str) -> ParsedScores:
    return ParsedScores(None, why)


def _checked(values: list[str], num_responses: int) -> ParsedScores:
    if not all(v.isdigit() for v in values):
        return _malformed(f"non-integer score in {values}")
    scores = tuple(int(v) for v in values)
    if len(scores) != num_responses:
        return _malformed(f"{len(scores)} scores for {num_responses} responses")
    if not all(MIN_SCORE <= s <= MAX_SCORE for s in scores):
        return _malformed(f"score outside {MIN_SCORE}..{MAX_SCORE} in {scores}")
    return ParsedScores(scores)


def _check_count(num_responses: int):
    if not isinstance(num_responses, int) or num_responses < 1:
        raise ValueError(f"num_responses: expected a positive integer, got {num_responses!r}")


def parse_strict(text, num_responses: int) -> ParsedScores:
    """The teacher's exact three-line format (see module docstring)."""
    _check_count(num_responses)
    if not isinstance(text, str):
        return _malformed(f"not text: {type(text).__name__}")
    lines = text.strip().split("\n")
    if len(lines) != 3:
        return _malformed(f"{len(lines)} lines, expected 3")
    for line, header in zip(lines, (PRINCIPLES, CRITIQUE, FINAL_SCORES)):
        if not line.startswith(header + " "):
            return _malformed(f"line {line[:30]!r} does not start with {header!r}")
    match = _STRICT_SCORES.fullmatch(lines[2])
    if match is None:
        return _malformed(f"last line {lines[2][:40]!r} is not 'Final Scores: [[a, b]]'")
    return _checked(match.group(1).split(", "), num_responses)


def parse_tolerant(text, num_responses: int) -> ParsedScores:
    """The last Final Scores [[...]] anywhere in the text (see module docstring)."""
    _check_count(num_responses)
    if not isinstance(text, str):
        return _malformed(f"not text: {type(text).__name__}")
    matches = _TOLERANT_SCORES.findall(text)
    if not matches:
        return _malformed("no 'Final Scores: [[...]]'")
    values = [v for v in _SEPARATOR.split(matches[-1].strip()) if v]
    if not values:
        return _malformed("empty score list")
    return _checked(values, num_responses)


PARSERS = {"strict": parse_strict, "tolerant": parse_tolerant}


def get_parser(name: str):
    try:
        return PARSERS[name]
    except KeyError:
        raise ValueError(f"grm.parser={name!r}: expected one of {sorted(PARSERS)}") from None
