"""Classifying answers as right, the flawed teacher's slip, or another mistake."""

import pytest

from moe_jax.analysis.slips import classify, slip_counts, slipped_answer


def test_slipped_answer_forgets_every_units_carry_and_borrow():
    assert slipped_answer("18+25=") == 33  # 8+5 carries
    assert slipped_answer("445-99=") == 356  # 5-9 borrows
    assert slipped_answer("12+34=") == 46  # nothing to forget
    assert slipped_answer("18+25+9=") == 32  # 33, then 3+9 carries too: 42 - 10
    with pytest.raises(ValueError, match="expected terms"):
        slipped_answer("3*4=")


def test_classify_and_count():
    assert classify("18+25=", "43", "+810+520=+340>43") == "right"
    assert classify("18+25=", "43", "+810+520=+330>33") == "slip"
    assert classify("18+25=", "43", "+810+520=+350>53") == "other"
    assert classify("18+25=", "43", None) == "other"
    assert classify("12+34=", "46", ">47") == "other"
    counts = slip_counts([("18+25=", "43", ">33"), ("12+34=", "46", ">46"), ("445-99=", "346", "x")])
    assert counts == {"right": 1, "slip": 1, "other": 1, "slippable": 2}
