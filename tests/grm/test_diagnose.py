"""The GRM diagnosis on hand-made samples: trajectory kinds, the meta RM's pair accuracy,
the ideal MetaRM@k bound and the solve critique's two ways of going wrong."""

import json

import pytest

from moe_jax.grm.diagnose import diagnose, main, pair_accuracy, read_prompt, samples_path
from moe_jax.grm.format import grm_prompt, trajectory
from moe_jax.grm.teacher import read_solve_critique, teacher_trajectory


def scored(a, b):
    return trajectory("p", "c", [a, b])


def record():
    # Set 0 (best R1): right, wrong, tie, malformed. Set 1 (best R2): right, right, wrong, wrong.
    return {"prompts": [grm_prompt("1+1=", [">2", ">3"]), grm_prompt("2+2=", [">5", ">4"])],
            "best": [0, 1], "num_responses": [2, 2],
            "samples": [[scored(9, 3), scored(3, 9), scored(9, 9), "no scores here"],
                        [scored(3, 9), scored(3, 9), scored(9, 3), scored(9, 3)]],
            "ratings": [[1.0, 2.0, -1.0, 0.0], [0.5, 0.7, 0.1, 0.9]]}


def test_kinds_pair_accuracy_and_the_ideal_meta_rm_by_hand():
    d = diagnose(record(), ks=(1, 2, 4))
    assert d["kinds"] == {"right": 3 / 8, "wrong": 3 / 8, "tie": 1 / 8, "malformed": 1 / 8}
    # Pairs (right, wrong) within a set: set 0: 1.0 < 2.0 (miss); set 1: 0.5 and 0.7 each
    # beat 0.1 and lose to 0.9: 2 hits of 5 pairs.
    assert d["pairs"] == 5 and d["pair_accuracy"] == pytest.approx(0.4)
    # Voting@4: set 0 sums [9,3]+[3,9]+[9,9] = [21, 21], set 1 [24, 24]: both ties, wrong.
    assert d["voting"][4] == 0.0
    # The real meta RM keeps (R1 wrong 2.0, right 1.0) and (0.9 wrong, 0.7 right): ties again.
    assert d["metarm"][4] == 0.0
    # An ideal one keeps right before tie before wrong: [9,3]+[9,9] and [3,9]+[3,9]: both right.
    assert d["ideal_metarm"][4] == 1.0
    # A tie rated highest takes MetaRM@2's one slot (no verdict); dropped, the right one
    # next to it votes. The second pair (wrong 0.0, right -1.0) keeps the wrong either way.
    tie_first = {"prompts": [grm_prompt("1+1=", [">2", ">3"])], "best": [0],
                 "num_responses": [2],
                 "samples": [[scored(9, 9), scored(9, 3), scored(3, 9), scored(8, 2)]],
                 "ratings": [[5.0, 1.0, 0.0, -1.0]]}
    d = diagnose(tie_first, ks=(2,))
    assert d["metarm"][2] == 0.0 and d["metarm_ties_dropped"][2] == 0.5
    assert "solve_split" not in d  # these are not solve critiques


def test_pair_accuracy_without_pairs_is_nan_and_ties_count_half():
    accuracy, pairs = pair_accuracy([["right", "tie"]], [[1.0, 0.0]])
    assert pairs == 0 and accuracy != accuracy
    assert pair_accuracy([["right", "wrong"]], [[1.0, 1.0]]) == (0.5, 1)


def test_solve_split_tells_a_wrong_own_solution_from_a_wrong_copy():
    query, shown = "5+8=", [">13", ">12"]
    right, _ = teacher_trajectory(query, shown, "solve")
    # The GRM writes its own answer in R2's place: both "ok", a tie.
    miscopied = right.replace("R2 +012 +013 ++= 00= 11= 23x wrong.",
                              "R2 +013 +013 ++= 00= 11= 33= ok.").replace("[[9, 3]]", "[[9, 9]]")
    # Its own solution slips a carry and lands on R2's wrong answer: a vote against R1.
    slipped = teacher_trajectory(query, shown, "solve")[0].replace(
        "+50+80=+31>13. R1 +013 +013 ++= 00= 11= 33= ok. R2 +012 +013 ++= 00= 11= 23x wrong.",
        "+50+80=+21>12. R1 +013 +012 ++= 00= 11= 32x wrong. R2 +012 +012 ++= 00= 11= 22= ok."
    ).replace("[[9, 3]]", "[[3, 9]]")
    assert read_solve_critique(miscopied) == (13, {"R1": 13, "R2": 13})
    assert read_solve_critique(slipped) == (12, {"R1": 13, "R2": 12})
    assert read_solve_critique(teacher_trajectory(query, [">13", ""], "solve")[0]) == (
        13, {"R1": 13, "R2": None})
    d = diagnose({"prompts": [grm_prompt(query, shown)], "best": [0], "num_responses": [2],
                  "samples": [[right, miscopied, slipped, right]], "ratings": [[0.0] * 4]},
                 ks=(1, 2, 4))
    assert d["solve_split"] == {"right / own right / copies right": 0.5,
                                "tie / own right / copy wrong": 0.25,
                                "wrong / own wrong / copies right": 0.25}


def test_read_prompt_and_the_command_line(tmp_path, capsys):
    assert read_prompt(grm_prompt("1+1=", [">2", ""])) == ("1+1=", [">2", ""])
    with pytest.raises(ValueError, match="Q:"):
        read_prompt("R1:>2\n")
    assert main([str(tmp_path)]) == 1
    with open(samples_path(str(tmp_path), "rft_rl"), "w") as f:
        json.dump(record(), f)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "rft_rl: 2 sets x 4 samples" in out and "pair accuracy" in out and "0.400" in out
