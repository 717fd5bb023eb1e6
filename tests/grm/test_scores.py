"""Score parsers: valid, malformed and wrong-count trajectories; neither ever raises on text."""

import pytest

from moe_jax.grm.format import trajectory
from moe_jax.grm.scores import get_parser, parse_strict, parse_tolerant

VALID = ("Principles: 2 terms, width 3.\n"
         "Critique: R1 ok. R2 step 1 total +650 wrong, expected +640.\n"
         "Final Scores: [[9, 2]]")


def test_valid_trajectory_parses_with_both():
    for parse in (parse_strict, parse_tolerant):
        parsed = parse(VALID, 2)
        assert parsed.ok and parsed.scores == (9, 2) and parsed.error is None


def test_teacher_format_round_trips():
    text = trajectory("3 terms, width 3.", "R1 ok. R2 ok. R3 unreadable.", [9, 9, 1])
    assert parse_strict(text, 3).scores == (9, 9, 1)


def test_wrong_count_of_scores_is_malformed():
    for parse in (parse_strict, parse_tolerant):
        parsed = parse(VALID, 3)  # 2 scores for 3 responses
        assert not parsed.ok and "2 scores for 3 responses" in parsed.error
        assert not parse(VALID.replace("[[9, 2]]", "[[9, 2, 4]]"), 2).ok


@pytest.mark.parametrize("text", [
    "",  # nothing generated
    "Principles: 2 terms, width 3.\nCritique: R1 ok.",  # cut off before the scores
    VALID.replace("[[9, 2]]", "[[9, 11]]"),  # outside 1..10
    VALID.replace("[[9, 2]]", "[[0, 2]]"),
    VALID.replace("[[9, 2]]", "[[9, x]]"),
    VALID.replace("[[9, 2]]", "[[]]"),
    VALID.replace("[[9, 2]]", "[[9.5, 2]]"),
])
def test_malformed_is_reported_not_raised(text):
    for parse in (parse_strict, parse_tolerant):
        parsed = parse(text, 2)
        assert not parsed.ok and parsed.scores is None and parsed.error


def test_non_text_is_malformed():
    assert not parse_strict(None, 2).ok and not parse_tolerant(b"bytes", 2).ok


def test_strict_rejects_what_tolerant_accepts():
    # Extra text after the scores, no space after the comma, lower case, missing colon.
    for text in (VALID + " thanks", VALID.replace("[[9, 2]]", "[[9,2]]"),
                 VALID.replace("Final Scores:", "final scores"),
                 "Critique: R1 ok.\nFinal Scores: [[9, 2]]"):
        assert not parse_strict(text, 2).ok, text
        assert parse_tolerant(text, 2).scores == (9, 2), text


def test_tolerant_reads_the_last_score_line():
    text = VALID + "\nFinal Scores: [[3, 8]]"
    assert parse_tolerant(text, 2).scores == (3, 8)
    assert not parse_strict(text, 2).ok  # four lines


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="num_responses"):
        parse_strict(VALID, 0)
    with pytest.raises(ValueError, match="grm.parser"):
        get_parser("lenient")
