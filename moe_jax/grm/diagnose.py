"""Why a GRM's sampled verdicts go wrong, and how much a meta RM could add to voting.

Reads the held-out samples the evaluation saved (<workdir>/eval_samples_<stage>.json,
written by pipeline.py: every set's prompt, label, K sampled trajectories and the meta
RM's rating of each). Every trajectory is one of

    right      its scores single out the labelled best response
    wrong      they single out another response: a vote against the best
    tie        they single out none: a vote that adds the same to every response
    malformed  no scores the tolerant parser reads: no vote at all

Voting@k can only be led astray by `wrong` trajectories, and a meta RM can only help by
keeping `right` ones and dropping `wrong` ones: dropping a tie or a malformed trajectory
changes no vote. So the figures that say what a meta RM does are

    pair accuracy    over every (right, wrong) pair of trajectories of the same set, how
                     often the meta RM rates the right one higher (0.5 is chance)
    ideal MetaRM@k   MetaRM@k with ratings right > tie = malformed > wrong, the paper's
                     k_meta = k / 2: the most any meta RM can reach with these samples

and MetaRM@k with ties dropped (voting.metarm_best's drop_uniform): the same ratings,
ties below every verdict that can move the vote. The MetaRM@k row always shows the
ratings as they are, whatever grm.meta_drop_uniform the run used.

For the `solve` critique it also splits the trajectories by whether the GRM's own
solution is right and whether it copied every response's answer as the input shows it
(teacher.read_solve_critique): the two ways its verdicts go wrong.

    python -m moe_jax.grm.diagnose WORKDIR
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import numpy as np

from moe_jax.grm.evaluate import scaling_accuracy
from moe_jax.grm.scores import parse_tolerant
from moe_jax.grm.teacher import query_terms, read_solve_critique
from moe_jax.grm.voting import predicted_best, verdict_correct

STAGES = ("rft", "rft_rl")
KINDS = ("right", "wrong", "tie", "malformed")


def samples_path(workdir: str, stage: str) -> str:
    return os.path.join(workdir, f"eval_samples_{stage}.json")


def kind(parsed, best: int) -> str:
    """One of KINDS for a parsed trajectory of a set whose best response is `best`."""
    if not parsed.ok:
        return "malformed"
    if verdict_correct(parsed, best):
        return "right"
    return "tie" if predicted_best(parsed.scores) is None else "wrong"


def read_prompt(prompt: str) -> tuple[str, list[str]]:
    """A GRM input (format.grm_prompt) -> (query, the responses as shown)."""
    lines = prompt.rstrip("\n").split("\n")
    if not lines[0].startswith("Q:"):
        raise ValueError(f"prompt: expected a GRM input starting 'Q:', got {prompt[:40]!r}")
    return lines[0][2:], [line.split(":", 1)[1] for line in lines[1:]]


def pair_accuracy(kinds, ratings) -> tuple[float, int]:
    """(accuracy, pairs) over the (right, wrong) pairs of each set's trajectories: how often
    the right one is rated higher, a tie counting half. nan when there are no pairs."""
    hits, pairs = 0.0, 0
    for row_kinds, row_ratings in zip(kinds, ratings):
        right = [r for k, r in zip(row_kinds, row_ratings) if k == "right"]
        wrong = np.array([r for k, r in zip(row_kinds, row_ratings) if k == "wrong"])
        for r in right:
            hits += float(np.sum(r > wrong) + 0.5 * np.sum(r == wrong))
            pairs += len(wrong)
    return (hits / pairs if pairs else float("nan")), pairs


def ideal_ratings(kinds) -> list[list[float]]:
    """What a perfect meta RM would say of each trajectory."""
    value = {"right": 2.0, "tie": 1.0, "malformed": 1.0, "wrong": 0.0}
    return [[value[k] for k in row] for row in kinds]


def _shown_answer(shown: str) -> int | None:
    """">-16" (format.shown_response's answer view) -> -16; "" (no answer) -> None."""
    return int(shown[1:]) if shown.startswith(">") and shown[1:].lstrip("-").isdigit() else None


def solve_split(records) -> Counter:
    """(kind, own solution right?, every answer copied as shown?) counts, for trajectories
    of the `solve` critique."""
    counts = Counter()
    for prompt, best, trajectories in records:
        query, shown = read_prompt(prompt)
        truth = sum(query_terms(query))
        for text in trajectories:
            own, copies = read_solve_critique(text)
            faithful = all(f"R{i + 1}" in copies and copies[f"R{i + 1}"] == _shown_answer(answer)
                           for i, answer in enumerate(shown))
            counts[(kind(parse_tolerant(text, len(shown)), best),
                    "own right" if own == truth else "own wrong",
                    "copies right" if faithful else "copy wrong")] += 1
    return counts


def diagnose(record: dict, ks=(1, 2, 4, 8, 16)) -> dict:
    """The figures above for one stage's saved samples."""
    prompts, best, samples = record["prompts"], record["best"], record["samples"]
    ratings, sizes = record["ratings"], record["num_responses"]
    parsed = [[parse_tolerant(t, n) for t in row] for row, n in zip(samples, sizes)]
    kinds = [[kind(p, b) for p in row] for row, b in zip(parsed, best)]
    counts = Counter(k for row in kinds for k in row)
    accuracy, pairs = pair_accuracy(kinds, ratings)
    ks = [k for k in ks if len(samples[0]) % k == 0]
    real = scaling_accuracy(parsed, ratings, best, sizes, ks)
    no_ties = scaling_accuracy(parsed, ratings, best, sizes, ks, drop_uniform=True)
    ideal = scaling_accuracy(parsed, ideal_ratings(kinds), best, sizes, ks)
    out = {"sets": len(prompts), "samples_per_set": len(samples[0]),
           "kinds": {k: counts[k] / max(sum(counts.values()), 1) for k in KINDS},
           "pair_accuracy": accuracy, "pairs": pairs,
           "voting": {k: real[f"voting@{k}"] for k in ks},
           "metarm": {k: real[f"metarm@{k}"] for k in ks},
           "metarm_ties_dropped": {k: no_ties[f"metarm@{k}"] for k in ks},
           "ideal_metarm": {k: ideal[f"metarm@{k}"] for k in ks}}
    if all("Solve " in t for row in samples[:5] for t in row[:1]):
        split = solve_split(zip(prompts, best, samples))
        total = sum(split.values())
        out["solve_split"] = {" / ".join(key): n / total for key, n in split.most_common()}
    return out


def format_report(stage: str, d: dict) -> str:
    lines = [f"{stage}: {d['sets']} sets x {d['samples_per_set']} samples; "
             + ", ".join(f"{k} {v:.1%}" for k, v in d["kinds"].items()),
             f"  meta RM pair accuracy (right vs wrong of a set) {d['pair_accuracy']:.3f} "
             f"over {d['pairs']} pairs",
             "  k:            " + " ".join(f"{k:>6}" for k in d["voting"]),
             "  Voting@k      " + " ".join(f"{v:6.1%}" for v in d["voting"].values()),
             "  MetaRM@k      " + " ".join(f"{v:6.1%}" for v in d["metarm"].values()),
             "  ties dropped  " + " ".join(f"{v:6.1%}" for v in d["metarm_ties_dropped"].values()),
             "  ideal MetaRM  " + " ".join(f"{v:6.1%}" for v in d["ideal_metarm"].values())]
    for key, share in d.get("solve_split", {}).items():
        lines.append(f"  {share:6.1%}  {key}")
    return "\n".join(lines)


def main(argv):
    if len(argv) != 1:
        print(__doc__)
        return 2
    found = False
    for stage in STAGES:
        path = samples_path(argv[0], stage)
        if os.path.exists(path):
            found = True
            with open(path) as f:
                print(format_report(stage, diagnose(json.load(f))))
    if not found:
        print(f"{argv[0]}: no eval_samples_<stage>.json; run the grm_spct experiment there first")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
